"""Handler modes: async on the loop, sync in threads, or in handler processes."""
