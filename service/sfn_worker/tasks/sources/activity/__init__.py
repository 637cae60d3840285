"""Step Functions activities: pollers long-poll GetActivityTask; the token is the whole delivery."""
