"""Demo functions: AWS Lambda-style handlers (payload format 2.0) that mitmesh runs on demand."""
