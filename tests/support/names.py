"""The names of the test world: the policy every test's pipeline runs on (tests/conftest.py
writes it) pins TEST_HOST (with subdomains, enforced) and REPORT_ONLY_HOST for TEST_APP, whose
ingest key is TEST_KEY; OTHER_APP has a key of its own."""

TEST_HOST = "api.pinwatch.test"
TEST_APP = "com.example.pinned"
TEST_KEY = "test-ingest-key-0123456789"
REPORT_ONLY_HOST = "cdn.pinwatch.test"
OTHER_APP = "com.example.other"
OTHER_KEY = "other-ingest-key-0123456789"
