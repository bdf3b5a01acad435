"""Session recording: a tamper-evident, replayable record of every session.

* :mod:`.format` -- the segment file format (JSON lines, hash chains, HMAC seals)
* :mod:`.segments` -- the recording directory (segments, lock, where the last run ended)
* :mod:`.writer` -- the writer thread (batches off the event loop, rotation, retention, failures)
* :mod:`.recorder` -- the gateway's recorder: session records, the failure policy, metrics
* :mod:`.verify` -- ``veilgate sessions verify``
* :mod:`.reader` -- reading records back (show, export, replay, simulate, index rebuild)
* :mod:`.index` -- the session index (``veilgate sessions list``)
* :mod:`.cli` -- the ``sessions`` and ``audit`` commands

Statement records are built by the native engine (``veilgate_native.AuditRecorder`` and the
session's statement log): the event loop only enqueues.
"""
