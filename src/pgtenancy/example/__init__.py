"""The example application's schema, shared by the example migrations, the demo and the ASGI example."""
