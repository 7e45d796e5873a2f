/* libFuzzer target: the definition loader. The input is written as the only .lua file of a
 * private directory and loaded the way the host loads its script directory (sg_script_new,
 * sg_script_scan, sg_script_definitions_json, sg_script_free), under the sandbox and with tight load
 * limits, so a fuzzed endless loop or allocation bomb costs milliseconds, not the run. Whatever the
 * text, nothing may crash and nothing may leak (LeakSanitizer checks at exit and on -detect_leaks). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "script.h"
#include "util.h"

#define MAX_INPUT 4096

static char dir[64], path[96];

static void remove_dir(void) {
  unlink(path);
  rmdir(dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  const char *tmp = getenv("TMPDIR");
  snprintf(dir, sizeof dir, "%.40s/sgfuzz.XXXXXX", tmp && *tmp ? tmp : "/tmp");
  if (!mkdtemp(dir)) { perror("mkdtemp"); abort(); }
  snprintf(path, sizeof path, "%s/fuzz.lua", dir);
  atexit(remove_dir);
  sg_log_level = SG_LOG_ERROR + 1; /* load errors are expected: keep the output readable */
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size > MAX_INPUT) return -1;
  FILE *f = fopen(path, "wb");
  if (!f || (size && fwrite(data, 1, size, f) != size) || fclose(f) != 0) abort();
  /* the host's limits, scaled down: a load gets 1M instructions, 100 ms of CPU, 16 MiB */
  struct sg_script_config cfg = {dir, (size_t)64 << 20, 1000000, (size_t)16 << 20, 100};
  struct sg_error e = {0};
  struct sg_script *sc = sg_script_new(&cfg, NULL, &e);
  if (!sc) { fprintf(stderr, "sg_script_new: %s\n", e.msg); abort(); }
  int errors = sg_script_scan(sc);
  if (errors < 0 || errors > 1) abort(); /* one file: it loaded or it failed */
  if (getenv("FUZZ_VERBOSE")) { /* say why an input failed to load (checking seeds) */
    if (!sg_script_print_errors(sc, stderr)) fprintf(stderr, "loaded: %d saga type(s)\n", sg_script_type_count(sc));
  }
  char *json = sg_script_definitions_json(sc);
  if (!json) abort();
  free(json);
  sg_script_free(sc);
  return 0;
}
