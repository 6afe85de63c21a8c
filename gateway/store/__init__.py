"""Where request state lives: token records, rate-limit counters, the penalty box."""
