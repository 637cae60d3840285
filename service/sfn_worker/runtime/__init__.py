"""What serves the process: AWS clients, the lifespan, every activity's worker, the HTTP
server, ECS task protection, the loop monitor and the ordered shutdown across activities."""
