"""Development helpers shared by tests and benchmarks: local servers (Redis, files, a Label Studio stand-in) and data builders."""
