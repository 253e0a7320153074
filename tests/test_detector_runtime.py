"""Detection at the device end: letterbox preprocessing and boxes mapped back to the original image."""

import numpy as np
import pytest

from edgeopt.data.dataset import Preprocess
from edgeopt.errors import UserInputError


def _image_with_box(h, w, box):
    img = np.zeros((h, w, 3), np.uint8)
    x1, y1, x2, y2 = box
    img[y1:y2, x1:x2] = 255
    return img


def _found(x: np.ndarray) -> tuple[int, int, int, int]:
    """The bright rectangle in a preprocessed CHW input: (x1, y1, x2, y2) in input pixels."""
    ys, xs = np.nonzero(x[0] > 0.9)
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


@pytest.mark.parametrize("pre", [Preprocess(resize=[320, 320], letterbox=True),
                                 Preprocess(resize=[320, 256], letterbox=True),
                                 Preprocess(resize=[320, 320]),
                                 Preprocess(resize=256, center_crop=224)])
def test_geometry_maps_input_pixels_back_to_the_original(pre):
    box = (200, 100, 280, 160)  # inside the centre crop too
    img = _image_with_box(240, 480, box)
    x = pre.apply(img)
    sy, sx, dy, dx = pre.geometry((240, 480))
    fx1, fy1, fx2, fy2 = _found(x)
    back = ((fx1 - dx) / sx, (fy1 - dy) / sy, (fx2 - dx) / sx, (fy2 - dy) / sy)
    np.testing.assert_allclose(back, box, atol=2.5)  # within the resampling blur


def test_letterbox_pads_with_grey_and_keeps_the_aspect_ratio():
    pre = Preprocess(resize=[320, 320], letterbox=True)
    x = pre.apply(np.full((240, 480, 3), 255, np.uint8))
    assert x.shape == (3, 320, 320)
    assert np.allclose(x[:, :80], 114 / 255) and np.allclose(x[:, 240:], 114 / 255)  # 80 rows above and below
    assert np.allclose(x[:, 80:240], 1.0)
    assert Preprocess.from_dict(pre.to_dict()) == pre
    assert "letterbox" not in Preprocess(resize=[320, 320]).to_dict()  # manifests without it stay as they were
    with pytest.raises(UserInputError, match="letterbox needs"):
        Preprocess(letterbox=True)
    with pytest.raises(UserInputError, match="pad_value"):
        Preprocess(resize=320, letterbox=True, pad_value=300)
