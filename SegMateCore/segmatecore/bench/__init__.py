"""``segmate bench``: speed and memory of SegMate and its peers. Users run it; the inference path
never imports it."""
