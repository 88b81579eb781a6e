"""Who is alive: workers' heartbeats and bootsteps, the tasks they run, what a dead one left."""
