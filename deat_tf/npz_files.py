"""Users' .npz datasets: reading the file safely and checking its arrays.

A `dataset=npz:PATH` file holds x_train, y_train, x_test and y_test (images
uint8 0-255 or floats in [0, 1], [N, H, W] or [N, H, W, C]; integer labels
0..K-1). Every problem is one `ValueError` naming the file and the array,
raised before any training work.
"""

import os
import zipfile

import numpy as np

from deat_tf import checks

ARRAY_KEYS = ("x_train", "y_train", "x_test", "y_test")
# First bytes of a zip archive (what numpy.savez writes) and of a single .npy array.
_ZIP_MAGIC = b"PK"
_NPY_MAGIC = b"\x93NUMPY"


def load_arrays(path):
    """Reads and checks a users' .npz file.

    The number of classes is max(y_train) + 1, so every class below it must have
    training examples and every test label must be one of them: a stray label
    (1000 among digits) would otherwise silently widen the network.

    Args:
        path: The .npz file.

    Returns:
        (the four arrays by key, images as [N, H, W, C]; the number of classes).

    Raises:
        ValueError: For a missing, damaged or wrong file, or bad arrays.
    """
    arrays = read_arrays(path, ARRAY_KEYS)
    for part in ("train", "test"):
        arrays[f"x_{part}"], arrays[f"y_{part}"] = checks.check_image_arrays(
            arrays[f"x_{part}"],
            arrays[f"y_{part}"],
            f"npz file {path}",
            array_names=(f"x_{part}", f"y_{part}"),
        )
    if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
        raise ValueError(
            f"npz file {path} x_train and x_test images differ in shape: "
            f"{arrays['x_train'].shape[1:]} vs {arrays['x_test'].shape[1:]}."
        )
    num_classes = _check_classes(arrays["y_train"], arrays["y_test"], path)
    return arrays, num_classes


def read_arrays(path, keys):
    """Reads `keys` from a .npz file, with one-line errors naming the file and the array.

    Nothing is unpickled (allow_pickle stays False), and files that are not a
    zip archive are refused by their first bytes, before numpy would suggest
    loading them "unsafely".

    Args:
        path: The .npz file.
        keys: The arrays to read.

    Returns:
        A dict of the arrays by key, as stored.

    Raises:
        ValueError: For a folder, a missing or damaged file, a missing key or an
            array of Python objects.
    """
    if os.path.isdir(path):
        raise ValueError(f"npz file {path} is a folder; pass dataset=npz:PATH to a .npz file.")
    if not os.path.isfile(path):
        raise ValueError(
            f"npz file {path} does not exist; pass dataset=npz:PATH to an existing file."
        )
    try:
        with open(path, "rb") as stream:
            start = stream.read(len(_NPY_MAGIC))
    except OSError as error:
        raise ValueError(f"cannot read npz file {path} ({error.strerror or error}).") from error
    if start.startswith(_NPY_MAGIC):
        raise ValueError(
            f"npz file {path} is a single .npy array, not a .npz archive; save the arrays "
            f"{', '.join(keys)} together with numpy.savez(path, x_train=..., ...)."
        )
    if not start.startswith(_ZIP_MAGIC):
        raise ValueError(
            f"npz file {path} is not a .npz archive (a .npz is a zip file written by "
            f"numpy.savez holding {', '.join(keys)}); its first bytes are {start[:8]!r}."
        )
    try:
        with np.load(path, allow_pickle=False) as stored:
            missing = [key for key in keys if key not in stored.files]
            if missing:
                raise ValueError(
                    f"npz file {path} has no {', '.join(missing)}; it needs arrays "
                    f"{', '.join(keys)} (images [N, H, W(, C)], integer labels [N])."
                )
            return {key: _read_npz_array(stored, key, path) for key in keys}
    except (OSError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(
            f"npz file {path} is damaged or truncated ({error_text(error)}); write it again "
            "with numpy.savez."
        ) from error


def _read_npz_array(stored, key, path):
    try:
        return stored[key]
    except ValueError as error:
        # numpy refuses object arrays without allow_pickle; that is a wrong file, not a hint
        # to unpickle it.
        if "allow_pickle" in str(error) or "pickled" in str(error):
            raise ValueError(
                f"npz file {path} array {key} holds Python objects, not numbers; store it as "
                "a numeric numpy array (deat_tf never unpickles data)."
            ) from None
        raise ValueError(f"npz file {path} array {key} is unreadable ({error}).") from error
    except (OSError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(
            f"npz file {path} array {key} is damaged or truncated ({error_text(error)}); "
            "write the file again with numpy.savez."
        ) from error


def error_text(error):
    """An error as one line: its type's name and the first line of its text."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


def _check_classes(train_labels, test_labels, path):
    """The number of classes of an npz file's labels, which must be 0..K-1, all trained on."""
    # np.unique, not np.bincount: a stray label of 10**9 must not allocate 10**9 counters.
    classes = np.unique(train_labels)
    count = int(classes[-1]) + 1
    if classes.size < count:
        # classes is sorted and distinct, so the first position i not holding i is absent.
        first_absent = int(np.argmax(classes != np.arange(classes.size)))
        absent = count - classes.size
        raise ValueError(
            f"npz file {path} y_train has labels up to {count - 1} but no example of {absent} "
            f"class{'es' if absent > 1 else ''} below it (the first is {first_absent}); labels "
            "must be 0..K-1 with every class in the training split (the network gets "
            "max label + 1 outputs)."
        )
    unseen = np.unique(test_labels[test_labels >= count])
    if unseen.size:
        shown = ", ".join(str(v) for v in unseen[:5]) + (", ..." if unseen.size > 5 else "")
        raise ValueError(
            f"npz file {path} y_test has label{'s' if unseen.size > 1 else ''} {shown} that "
            f"y_train never has (its classes are 0..{count - 1}); a class without training "
            "examples cannot be learnt or tested."
        )
    return count
