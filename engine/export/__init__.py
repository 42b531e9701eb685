"""Export a finished run to the formats people deploy, each checked against the Keras model.

Formats: `keras` (the run's own file), `savedmodel` (a serving signature taking uint8
images of any size, resized and preprocessed inside), `tflite`, `tflite-fp16`,
`tflite-int8` (full-integer, calibrated on the run's training images; run with the LiteRT
interpreter) and `onnx` (tf2onnx, run with onnxruntime). Each export is reloaded and
compared with the Keras model on the run's test split (engine.export.parity), and
`labels.txt` (class k's name on line k+1) is written beside it.

`EXPORT_FORMATS` is the one table of formats (name, file name, title, writer, runner) that the
engine, the CLI (`FORMATS`, the names) and the Runs page read.
"""

from engine.export.formats import (
    EXPORT_FORMATS,
    FORMATS,
    ExportError,
    ExportFormat,
    ExportUnavailable,
    as_download,
    export_run,
)

__all__ = ["EXPORT_FORMATS", "FORMATS", "ExportError", "ExportFormat", "ExportUnavailable", "as_download", "export_run"]
