"""A pure demo function: greets the caller by `?name=`, by the verified JWT subject, or the world.

Written exactly as for AWS Lambda behind an API Gateway HTTP API (payload format 2.0): nothing in
it knows mitmesh.
"""

import json


def handler(event, context):
    params = event.get("queryStringParameters") or {}
    claims = event.get("requestContext", {}).get("authorizer", {}).get("jwt", {}).get("claims", {})
    name = params.get("name") or claims.get("sub") or "world"
    return {
        "statusCode": 200,
        "headers": {"content-type": "application/json"},
        "body": json.dumps({"message": f"hello, {name}", "function": context.function_name,
                            "request_id": context.aws_request_id}),
    }
