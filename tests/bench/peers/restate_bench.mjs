// The bench saga as a Restate service handler: each step a ctx.run (journaled by the Restate server before
// the handler goes on), the compensations ctx.runs too; a refusal is a TerminalError (not retried). The
// load goes through Restate's ingress over HTTP (fetch keeps its connections alive), as a client would.
//   node restate_bench.mjs serve PORT            the service endpoint
//   node restate_bench.mjs load INGRESS_URL N C K the load
import * as restate from "@restatedev/restate-sdk";
import { drive } from "./load.mjs";

// the SDK uses Promise.withResolvers (Node 22); Debian 12's Node is 20
if (!Promise.withResolvers) {
  Promise.withResolvers = function () {
    let resolve, reject;
    const promise = new this((a, b) => { resolve = a; reject = b; });
    return { promise, resolve, reject };
  };
}

const [cmd, ...args] = process.argv.slice(2);

const benchOrder = restate.service({
  name: "BenchOrder",
  handlers: {
    run: async (ctx, input) => {
      await ctx.run("reserve", async () => ({ reserved: input.qty }));
      await ctx.run("charge", async () => ({ charged: input.amount }));
      try {
        await ctx.run("ship", async () => {
          if (input.fail) throw new restate.TerminalError("shipping refused the order");
          return { shipped: true };
        });
        return "completed";
      } catch (e) {
        if (!(e instanceof restate.TerminalError)) throw e;
        await ctx.run("refund", async () => ({ refunded: input.amount }));
        await ctx.run("release", async () => ({ released: input.qty }));
        return "compensated";
      }
    },
  },
});

if (cmd === "serve") {
  restate.serve({ services: [benchOrder], port: Number(args[0]) });
} else {
  const [url, n, c, k] = [args[0], ...args.slice(1).map(Number)];
  await drive("restate", n || 2000, c || 64, k ?? 10, async (input) => {
    const res = await fetch(`${url}/BenchOrder/run`, {
      method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(input) });
    const text = await res.text();
    if (!res.ok) throw new Error(`HTTP ${res.status}: ${text}`);
    return JSON.parse(text);
  });
}
