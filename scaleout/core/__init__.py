"""What the services run on: settings, credentials, sessions, tokens, keys, the Redis store.

Never imports `scaleout.lab` (checked by `make lint`).
"""
