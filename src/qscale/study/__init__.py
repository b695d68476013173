"""qscale.study: study grids and presets (``grid``), the SQLite result store (``store``), the QiD runner
(``qid``: ``build_study``, ``run_qid_study``), the measurement-noise policy (``noise``) and the CLI (``cli``).

Import the submodules directly; this package imports nothing so that ``qscale.report`` can use
``qscale.study.noise`` without a cycle.
"""
