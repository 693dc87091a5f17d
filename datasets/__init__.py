"""Data pipeline: CLEVR v1.0 reader/writer, program executor, procedural generator,
feature extraction, question preparation, VQA v1 with parser layouts."""
