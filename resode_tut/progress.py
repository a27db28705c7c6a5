"""Progress bars for long loops (tqdm), off where nobody watches them."""
from __future__ import annotations

import os

from tqdm.auto import tqdm

__all__ = ["progress"]


def progress(iterable, desc: str, enabled: bool = True, **kwargs):
    """``tqdm.auto.tqdm(iterable)``, unless disabled.

    Disabled when ``enabled`` is false or the environment sets ``TQDM_DISABLE``
    to anything but ``0`` (the book build and the tests do, so that bars do not
    fill the pages and logs).  The notebook flavour of tqdm ignores that
    variable by itself, hence this helper.

    Parameters
    ----------
    iterable : iterable
    desc : str
        The bar's label.
    enabled : bool
        False: no bar.
    **kwargs
        Passed to tqdm.
    """
    disable = not enabled or os.environ.get("TQDM_DISABLE", "0").strip() not in ("", "0")
    return tqdm(iterable, desc=desc, disable=disable, **kwargs)
