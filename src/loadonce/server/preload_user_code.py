"""Imported by the fork server (``worker_start``) after the libraries: the user's own code
that every worker imports (the app module, each model's loader or factory module), named in
``LOADONCE_PRELOAD_USER_CODE``, so that what those modules build and import is shared by the
workers copy-on-write instead of held by each.

multiprocessing's fork server skips a preloaded module that raises ``ImportError`` but dies of
any other exception, and with it every worker start. User code may raise anything at import,
so each module is imported here, its failure ignored: the worker imports it again when it
loads the model, and reports the failure there, with the model's name.
"""

import contextlib
import importlib
import os

from loadonce.server.worker_start import USER_CODE_VARIABLE

for _name in filter(None, os.environ.get(USER_CODE_VARIABLE, "").split(",")):
    with contextlib.suppress(BaseException):  # reported by the worker's own import
        importlib.import_module(_name)
