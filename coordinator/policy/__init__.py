"""Pure policy core: the NetworkScope model, its validation, port-range masks
and the reference evaluator. Imports no grpc, sqlite3, OVS or asyncio."""
