"""The tensor- and PNG-backed datasets and the shared batch iterator."""

import torch
from torch.utils.data import DataLoader

from pipeline.data.datasets import (
    PngDigits,
    TensorDigits,
    index_batches,
    keep_batch,
    load_split,
    normalize,
)


def test_tensor_dataset_batches_by_index(processed_dir):
    split = load_split(processed_dir, "train")
    data = TensorDigits.from_split(split)
    idx = torch.tensor([5, 0, 17, 3])
    images, labels = data.get_batch(idx)
    assert images.dtype == torch.uint8 and images.shape == (4, 1, 28, 28)
    assert torch.equal(images, split.images[idx]) and torch.equal(labels, split.labels[idx])
    image, label = data[17]
    assert torch.equal(image, split.images[17]) and label == int(split.labels[17])


def test_dataloader_fetches_whole_batches_through_getitems(processed_dir):
    data = TensorDigits.load(processed_dir, "val")
    loader = DataLoader(
        data,
        batch_size=64,
        shuffle=True,
        collate_fn=keep_batch,
        generator=torch.Generator().manual_seed(0),
    )
    seen = torch.cat([labels for _, labels in loader])
    assert len(seen) == len(data) == 400
    assert torch.equal(seen.sort().values, data.labels.sort().values)


def test_per_item_dataloader_with_default_collate(processed_dir):
    data = TensorDigits.load(processed_dir, "val")
    images, labels = next(iter(DataLoader(list(data), batch_size=8)))
    assert images.shape == (8, 1, 28, 28) and torch.equal(labels, data.labels[:8])


def test_png_dataset_matches_tensors(sample_png_dir):
    tensors = load_split(sample_png_dir, "val")
    pngs = PngDigits.load(sample_png_dir, "val")
    assert len(pngs) == len(tensors)
    order = torch.argsort(tensors.ids)  # PngDigits sorts by id
    images, labels = pngs.get_batch([0, 1, 2])
    assert torch.equal(images, tensors.images[order[:3]])
    assert torch.equal(labels, tensors.labels[order[:3]])
    test = PngDigits.load(sample_png_dir, "test")
    assert test.labels is None and test[0][0].shape == (1, 28, 28)


def test_index_batches_cover_every_index_once():
    order = torch.randperm(103, generator=torch.Generator().manual_seed(0))
    batches = list(index_batches(103, 10, order))
    assert [len(b) for b in batches] == [10] * 10 + [3]
    assert torch.equal(torch.cat(batches), order)
    assert len(list(index_batches(103, 10, order, drop_last=True))) == 10


def test_normalize_uses_mnist_statistics():
    images = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1)
    x = normalize(images).flatten()
    assert torch.allclose(x, torch.tensor([-0.1307 / 0.3081, (1 - 0.1307) / 0.3081]))
