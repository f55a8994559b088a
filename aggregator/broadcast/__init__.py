"""Alert broadcast: routes and receivers (`routes`), how each receiver is reached (`senders`), and the durable
outbox that ties them to the store (`outbox`)."""
