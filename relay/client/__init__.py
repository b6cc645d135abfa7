"""Client-side protocol logic without I/O: backoff, region choice and the session state machine."""
