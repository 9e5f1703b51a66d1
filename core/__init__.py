"""Shared home for heatdesk: configuration, database access, quality codes and the
private servers (PostgreSQL, MQTT broker) that `heatdesk up` and the tests start.

Everything may import ``core``; ``core`` imports none of the other heatdesk packages.
"""
