"""The HTTP layer: settings, routes, error mapping and the app's lifespan."""
