"""The gRPC edge: TLS, caller identity, request validation, servicers."""
