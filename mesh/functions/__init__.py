"""Serverless functions: AWS Lambda-style Python handlers run in their own processes, on demand."""
