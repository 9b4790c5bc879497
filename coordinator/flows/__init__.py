"""Pure flow layer: the pipeline declaration, flow values, the compiler and
rendering to ovs-ofctl text. Imports no grpc, sqlite3, OVS or asyncio."""
