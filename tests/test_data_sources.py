"""The user's own data from the CLI: image folders, tensor files, the validation split, and
--input-shape."""

from __future__ import annotations

import argparse

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from penjing.commands._common import example_input, input_shape
from penjing.data import get_data, validation_split
from penjing.data.digits import digits


def _images(root, classes=("cat", "dog"), per_class=5, size=(12, 10)):
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            value = 40 * c + 10 * i
            Image.new("RGB", size, (value, 255 - value, 7)).save(root / name / f"{i}.png")


def test_image_folder_is_read_resized_and_split(tmp_path):
    _images(tmp_path)
    train, test = get_data(f"imagefolder:{tmp_path}", image_size=(8, 6))
    assert len(train) + len(test) == 10 and len(test) == 2
    x, y = train.tensors
    assert x.shape[1:] == (3, 8, 6) and x.dtype == torch.float32
    assert 0 <= float(x.min()) and float(x.max()) <= 1
    assert set(y.tolist()) <= {0, 1}
    # one pixel decodes to what was written: red = (40 * class + 10 * index) / 255
    img = Image.open(tmp_path / "dog" / "3.png")
    assert img.getpixel((0, 0)) == (70, 185, 7)
    again, _ = get_data(f"imagefolder:{tmp_path}", image_size=(8, 6))
    assert torch.equal(again.tensors[0], x)  # the split is seeded


def test_image_folder_with_train_and_test(tmp_path):
    _images(tmp_path / "train")
    _images(tmp_path / "test", per_class=2)
    train, test = get_data(f"imagefolder:{tmp_path}", image_size=(4, 4))
    assert len(train) == 10 and len(test) == 4


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="image folder .* not found"):
        get_data(f"imagefolder:{tmp_path / 'none'}")
    with pytest.raises(ValueError, match="expected one sub-folder per class"):
        get_data(f"imagefolder:{tmp_path}")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot read image .*bad.png"):
        get_data(f"imagefolder:{tmp_path}")


def test_tensor_file_sources(tmp_path):
    ids = torch.randint(0, 100, (20, 7))
    labels = torch.arange(20) % 3
    save_file({"x": ids, "y": labels}, str(tmp_path / "d.safetensors"))
    train, test = get_data(f"tensors:{tmp_path / 'd.safetensors'}")
    assert len(train) == 16 and len(test) == 4 and train.tensors[0].dtype == torch.int64
    torch.save({"train_x": ids[:10], "train_y": labels[:10], "test_x": ids[10:], "test_y": labels[10:]},
               tmp_path / "d.pt")
    train, test = get_data(f"tensors:{tmp_path / 'd.pt'}")
    assert torch.equal(test.tensors[0], ids[10:])
    save_file({"inputs": ids}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match=r"holds \['inputs'\]; expected x and y"):
        get_data(f"tensors:{tmp_path / 'bad.safetensors'}")
    save_file({"x": ids, "y": labels[:5]}, str(tmp_path / "short.safetensors"))
    with pytest.raises(ValueError, match="same number of samples"):
        get_data(f"tensors:{tmp_path / 'short.safetensors'}")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(ValueError, match="is not a safetensors file"):
        get_data(f"tensors:{tmp_path / 'junk.safetensors'}")


def test_unknown_source_names_the_choices():
    with pytest.raises(ValueError, match="use 'digits', 'mnist:PATH', 'cifar10:PATH', 'imagefolder:PATH'"):
        get_data("imagenet")


def test_validation_split_is_disjoint_seeded_and_leaves_test_alone():
    train, _ = digits()
    part, val = validation_split(train, 0.1)
    assert len(part) + len(val) == len(train) and len(val) == round(0.1 * len(train))
    rows = {tuple(r.flatten().tolist()) for r in part.tensors[0]}
    assert not any(tuple(r.flatten().tolist()) in rows for r in val.tensors[0][:50])
    part2, val2 = validation_split(train, 0.1)
    assert torch.equal(val.tensors[0], val2.tensors[0])
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\)"):
        validation_split(train, 1.0)


def test_input_shape_flag():
    assert input_shape("3,224,224") == (3, 224, 224)
    assert input_shape("128") == (128,)
    with pytest.raises(argparse.ArgumentTypeError, match="no batch dimension"):
        input_shape("a,b")
    args = argparse.Namespace(input_shape=(16,), input_dtype="int64")
    x = example_input(args, None, batch=2)
    assert x.shape == (2, 16) and x.dtype == torch.int64
