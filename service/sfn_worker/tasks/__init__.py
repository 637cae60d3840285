"""What serves one activity: slots, pollers, the bounded queue, task runners, heartbeats,
answers, and where handlers run. Knows nothing of the process around it (runtime/)."""
