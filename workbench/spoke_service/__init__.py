"""The spoke: DICOM catalog, participant cases, the sandboxed container runner."""
