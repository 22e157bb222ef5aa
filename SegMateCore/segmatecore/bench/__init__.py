"""``segmate bench``: speed and memory of SegMate and its peers. Users run it; the inference path
never imports it.

:mod:`~segmatecore.bench.run` runs the rows that :mod:`~segmatecore.bench.configs` lists on the inputs of
:mod:`~segmatecore.bench.inputs`, each in a fresh :mod:`~segmatecore.bench.worker` process
(:mod:`~segmatecore.bench.jobs`, :mod:`~segmatecore.bench.memory`), against the machine of
:mod:`~segmatecore.bench.machine`; :mod:`~segmatecore.bench.revision` adds another git revision's
rows. :mod:`~segmatecore.bench.results`, :mod:`~segmatecore.bench.markdown` and
:mod:`~segmatecore.bench.plot` report them.
"""
