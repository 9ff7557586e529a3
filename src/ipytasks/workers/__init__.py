"""The worker runtime: how a cell runs in a worker process, for process and dask mode.

One runtime, wherever the worker process lives::

    kernel (process mode)                      Dask worker (dask mode)
      modes/_process.py: pool on the loop        dask_worker.py: warm children per
                    │                            kernel session, one Dask task each
                    └──────────────┬─────────────────────┘
                                   │ local.Child: start, one job at a time,
                                   │ output pumps, kill, how it died
                 job  ─── wire ───▶│
                                   ▼
                        worker process: child.py
                        run the cell in a fresh namespace,
                        stream fd 1 and fd 2 as it prints,
                        end-of-job marker on both
                 notes ◀── wire ───┤  (progress, where it is) while it runs
                 reply ◀── wire ───┘  (bound names, result, figures, cost; or the error)

* :mod:`.wire`: one message over a pipe, and the picklers of the values it carries
  (runs on every side);
* :mod:`.child`: what runs inside the worker process (its loop, one cell as a job, and
  the notes a job sends while it runs: its progress, where it is, what it cost);
* :mod:`.watch`: tqdm bars told instead of drawn, and where a body is (used by the
  worker process and by the kernel's thread and async tasks alike);
* :mod:`.local`: a worker process seen from its parent (the kernel, or a Dask worker);
* :mod:`.dask_worker`: what runs on a Dask worker: the children of each kernel there.

None of these modules imports the rest of ipytasks, IPython or Dask (at import
time), and they import each other relatively only: the worker process runs
:mod:`.wire`, :mod:`.watch` and :mod:`.child` from code its parent sends, and a Dask
worker runs all five from the sources the kernel sends (nothing of ipytasks is installed there). The
kernel's side of a worker mode — refusing cells, taking the inputs, ending the task —
is :class:`ipytasks.modes.worker.WorkerMode`; the payload is
:mod:`ipytasks.namespace.shipping`.
"""
