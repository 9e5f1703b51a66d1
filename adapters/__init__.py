"""Protocol adapters: read devices and hand Readings to a Sink. They know nothing of the database."""
