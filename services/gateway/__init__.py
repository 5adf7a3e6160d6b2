"""HTTP/JSON and Server-Sent Events in front of the gRPC services, transcoded at run time by the
protos' google.api.http annotations.

app (the Starlette app), routes (a route per binding), paths (path templates), fields
(request field paths), jsonmap (HTTP request to proto, proto to JSON), errors (Google's
JSON error shape), comments (proto comments), openapi (the OpenAPI document).
"""
