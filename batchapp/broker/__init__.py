"""Everything between batchapp and RabbitMQ: queue names and routes, the message guard, the
worker's consumer, dead letters, countdowns on quorum queues, and confirmed publishing."""
