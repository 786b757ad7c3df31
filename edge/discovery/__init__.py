"""
Service discovery: providers (Docker, the config file) that build complete
snapshots, and the publisher that merges them and hands them to consumers.
"""
