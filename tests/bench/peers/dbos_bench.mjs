// The bench saga as a DBOS workflow: each step a DBOS step (checkpointed in DBOS's system database on
// PostgreSQL before the next one runs), the compensations steps too. The participants answer at once, as
// in sagahost bench's in-process mode.
//   DBOS_SYSTEM_DATABASE_URL=postgres://... node dbos_bench.mjs N C K
import { DBOS } from "@dbos-inc/dbos-sdk";
import { drive } from "./load.mjs";

const [n, c, k] = process.argv.slice(2).map(Number);

async function benchOrder(input) {
  await DBOS.runStep(async () => ({ reserved: input.qty }), { name: "reserve" });
  await DBOS.runStep(async () => ({ charged: input.amount }), { name: "charge" });
  try {
    await DBOS.runStep(async () => {
      if (input.fail) throw new Error("shipping refused the order");
      return { shipped: true };
    }, { name: "ship", retriesAllowed: false });
    return "completed";
  } catch (e) {
    await DBOS.runStep(async () => ({ refunded: input.amount }), { name: "refund" });
    await DBOS.runStep(async () => ({ released: input.qty }), { name: "release" });
    return "compensated";
  }
}
const workflow = DBOS.registerWorkflow(benchOrder, { name: "BenchOrder" });

DBOS.setConfig({ name: "sagahost-bench-peer", applicationVersion: "0.1.0",
                 systemDatabaseUrl: process.env.DBOS_SYSTEM_DATABASE_URL });
await DBOS.launch();
await drive("dbos", n || 2000, c || 64, k ?? 10, (input) => workflow(input));
await DBOS.shutdown();
