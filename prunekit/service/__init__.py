"""The evaluation service: jobs, the scheduler and its worker processes, the result store, Ray."""
