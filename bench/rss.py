"""Peak RSS of one worker process after serving the heavy patient.

``python -m bench.rss DIR ROUNDS`` loads the app as a worker does, posts the request bodies in DIR
(``<hook>.json``, written by the parent, so the patient generator's own objects are not counted) ROUNDS times,
and prints VmHWM in kB.
"""

from __future__ import annotations

import sys
from pathlib import Path


def peak_rss_kb() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def write_bodies(folder: Path) -> None:
    """The heavy patient's request for every hook, as files for :func:`main`."""
    from .harness import HOOKS, app_for, request_bytes
    from .patients import heavy

    patient = heavy()
    with app_for() as app:
        for hook in HOOKS:
            (folder / f"{hook}.json").write_bytes(request_bytes(app, hook, patient))


def main() -> None:
    from .harness import HOOKS, app_for, post

    folder, rounds = Path(sys.argv[1]), int(sys.argv[2])
    with app_for() as app:
        client = app.test_client()
        for _ in range(rounds):
            for hook in HOOKS:
                post(client, hook, (folder / f"{hook}.json").read_bytes())
    print(peak_rss_kb())


if __name__ == "__main__":
    main()
