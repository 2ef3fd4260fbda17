"""A benchmark run's own directory: its meshes' var folders (logs, certificates, databases of
Milvus Lite), removed when the run ends, so no run leaves gigabytes behind on a shared disk.

If the run fails, what its meshes logged is printed to stderr first: the traceback behind an
INTERNAL lives only in a service's log, and the directory goes with the run (a CI failure of
the tiny benches would otherwise say nothing about its cause)."""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.mesh import log_report


@contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    except BaseException:
        print(f"\n== what the bench's meshes logged ({path}) ==\n{log_report(path)}",
              file=sys.stderr, flush=True)
        raise
    finally:
        shutil.rmtree(path, ignore_errors=True)
