"""What the test tiers share: the test world's names, payload builders, the in-process pipeline,
serving apps with real uvicorn, reading records back off Kafka."""
