"""The system's crypt(3) (libxcrypt), for SHA512-CRYPT and SHA256-CRYPT hashes.

passlib (libpass) checks ``$6$``/``$5$`` hashes in pure Python: about half a second a
login at Dovecot's default 5000 rounds, where the C library takes a millisecond or two.
Dovecot itself verifies these schemes with crypt(3), so we do the same. ``crypt_rn``
is the re-entrant form (its work area is passed in), safe in the login thread pool,
and ctypes releases the GIL for the call. Where the library is missing (not Linux),
:func:`crypt` is None and the caller falls back to passlib.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable

# libxcrypt: sizeof(struct crypt_data) is 32768 (crypt.h, CRYPT_DATA_*); crypt_rn
# takes the size, so a larger or equal buffer is all it needs.
_CRYPT_DATA_SIZE = 32768


def _load() -> Callable[[str, str], str | None] | None:
    name = ctypes.util.find_library("crypt")
    if name is None:
        return None
    try:
        lib = ctypes.CDLL(name)
        crypt_rn = lib.crypt_rn
    except (OSError, AttributeError):
        return None
    crypt_rn.restype = ctypes.c_char_p
    crypt_rn.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int]

    def crypt(phrase: str, setting: str) -> str | None:
        """The hash of ``phrase`` with the salt and rounds of ``setting``; None on error."""
        data = ctypes.create_string_buffer(_CRYPT_DATA_SIZE)
        result = crypt_rn(phrase.encode(), setting.encode(), data, _CRYPT_DATA_SIZE)
        # libxcrypt answers an invalid setting with NULL or a string starting with "*".
        if not result or result.startswith(b"*"):
            return None
        return result.decode("ascii", "replace")

    return crypt


crypt = _load()
