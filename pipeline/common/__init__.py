"""What every phase shares: errors and exits, files written atomically, the device, choices."""
