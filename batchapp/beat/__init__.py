"""Beat: the schedule, and the scheduler that sends it only while it holds the lease."""
