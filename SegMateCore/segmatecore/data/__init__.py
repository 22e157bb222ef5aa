"""Reading, checking and arranging CT data: image I/O and DICOM series, input validation, geometry
(the canonical RAS+ view and back), the 2.5D slice preprocessing, the organ table, and the
preparation of training data. The lowest layer: it imports no other segmatecore subpackage."""
