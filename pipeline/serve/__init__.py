"""`pipeline serve`: a page to draw a digit on, and a JSON API, over trained checkpoints.

- `app`: the FastAPI app over any backend (`backend.Backend`): routes, response schemas and
  the mapping of every error to a 4xx with one sentence.
- `requests`: what a request may hold: the JSON schema, multipart uploads, their messages.
- `limits`: the body-size limit, enforced before anything is parsed.
- `digitize`: MNIST-style preprocessing of uploaded images (NumPy and Pillow only).
- `torch_backend`: checkpoints loaded with torch; the only module here that imports torch.
- `server`: binding the socket and running uvicorn until Ctrl-C (`serve`).
- `static/`: the page's HTML, script and CSS.

Nothing is imported here, so `pipeline.serve.digitize` costs no more than NumPy and Pillow.
"""
