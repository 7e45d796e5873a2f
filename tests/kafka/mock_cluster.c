/* mock_cluster: librdkafka's mock Kafka cluster as a process, for tests/spec/kafka_spec.lua.
 *
 *   mock_cluster [BROKERS]       (default 3)
 *
 * Prints "bootstrap <host:port,...>" on stdout once the cluster listens, then reads commands on stdin,
 * one a line, answering each with "ok" or "error <what>":
 *   down <broker id>                      the broker stops answering (its connections are closed)
 *   up <broker id>                        it answers again
 *   leader <topic> <partition> <broker>   moves a partition's leadership
 *   topic <topic> <partitions>            creates a topic (replication factor 1..BROKERS)
 *   quit                                  (or end of input) destroys the cluster and exits */
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void answer(rd_kafka_resp_err_t err) {
  if (err) printf("error %s\n", rd_kafka_err2str(err));
  else printf("ok\n");
  fflush(stdout);
}

int main(int argc, char **argv) {
  int brokers = argc > 1 ? atoi(argv[1]) : 3;
  if (brokers < 1 || brokers > 10) {
    fprintf(stderr, "usage: mock_cluster [BROKERS (1..10)]\n");
    return 2;
  }
  char errstr[256];
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  /* the handle only carries the cluster's threads; it never connects anywhere (and need not say so) */
  rd_kafka_conf_set(conf, "log_level", "4", errstr, sizeof errstr);
  if (rd_kafka_conf_set(conf, "bootstrap.servers", "", errstr, sizeof errstr) != RD_KAFKA_CONF_OK) {
    fprintf(stderr, "mock_cluster: %s\n", errstr);
    return 1;
  }
  rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
  if (!rk) {
    fprintf(stderr, "mock_cluster: rd_kafka_new: %s\n", errstr);
    return 1;
  }
  rd_kafka_mock_cluster_t *mc = rd_kafka_mock_cluster_new(rk, brokers);
  if (!mc) {
    fprintf(stderr, "mock_cluster: cannot start a mock cluster of %d brokers\n", brokers);
    return 1;
  }
  printf("bootstrap %s\n", rd_kafka_mock_cluster_bootstraps(mc));
  fflush(stdout);
  char line[512];
  while (fgets(line, sizeof line, stdin)) {
    char cmd[32], topic[256];
    int a = 0, b = 0;
    if (sscanf(line, "%31s", cmd) != 1) continue;
    if (!strcmp(cmd, "quit")) break;
    if (!strcmp(cmd, "down") && sscanf(line, "%*s %d", &a) == 1) answer(rd_kafka_mock_broker_set_down(mc, a));
    else if (!strcmp(cmd, "up") && sscanf(line, "%*s %d", &a) == 1) answer(rd_kafka_mock_broker_set_up(mc, a));
    else if (!strcmp(cmd, "leader") && sscanf(line, "%*s %255s %d %d", topic, &a, &b) == 3)
      answer(rd_kafka_mock_partition_set_leader(mc, topic, a, b));
    else if (!strcmp(cmd, "topic") && sscanf(line, "%*s %255s %d", topic, &a) == 2)
      answer(rd_kafka_mock_topic_create(mc, topic, a, brokers < 3 ? brokers : 3));
    else {
      printf("error unknown command: %s", line);
      fflush(stdout);
    }
  }
  rd_kafka_mock_cluster_destroy(mc);
  rd_kafka_destroy(rk);
  return 0;
}
