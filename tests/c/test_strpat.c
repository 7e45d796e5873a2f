/* Unit tests for lstrpat.c, the bounded string.find/match/gmatch/gsub: hand-written cases for each
 * feature and error (run against stock Lua's functions too, which proves the expectations), a
 * differential fuzzer against stock Lua 5.4, and the bounds: explosive patterns are refused fast with
 * the calling script's line, literal searches are linear, ordinary patterns on MBs are not refused.
 * STRPAT_SEED and STRPAT_CASES in the environment override the fuzzer's seed and case count. */
#define _GNU_SOURCE
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "check.h"
#include "lstrpat.h"

#define FUZZ_SEED 20240611L
#define FUZZ_CASES 40000L
#define EXPLOSIVE_MS 100.0 /* the bound for refusing a backtracking bomb */
#define LINEAR_MS 2000.0   /* generous bound for a literal search over 30 MB */

static const char hand_lua[] =
    "-- Hand-written cases: arg S holds find/match/gmatch/gsub (run once with stock Lua's, to prove the\n"
    "-- expectations, and once with the bounded ones); check(ok, label) counts a check.\n"
    "local S = ...\n"
    "local pack, concat, sfmt = table.pack, table.concat, string.format\n"
    "local Z = string.char(0)\n"
    "local function P(...) return pack(...) end\n"
    "local function show(t)\n"
    "  local o = {}\n"
    "  for i = 1, t.n do\n"
    "    local v = t[i]\n"
    "    o[i] = type(v) == \"string\" and sfmt(\"%q\", v) or (math.type(v) or type(v)) .. \" \" .. tostring(v)\n"
    "  end\n"
    "  return \"(\" .. concat(o, \", \") .. \")\"\n"
    "end\n"
    "local function eq(label, got, want)\n"
    "  local ok = got.n == want.n\n"
    "  for i = 1, want.n do\n"
    "    local a, b = got[i], want[i]\n"
    "    ok = ok and type(a) == type(b) and math.type(a) == math.type(b) and a == b\n"
    "  end\n"
    "  check(ok, label .. \": got \" .. show(got) .. \", want \" .. show(want))\n"
    "end\n"
    "local function all(it)\n"
    "  local t = {n = 0}\n"
    "  while true do\n"
    "    local r = pack(it())\n"
    "    if r.n == 0 then break end\n"
    "    for i = 1, r.n do t.n = t.n + 1; t[t.n] = r[i] end\n"
    "    t.n = t.n + 1; t[t.n] = \"|\"\n"
    "  end\n"
    "  return t\n"
    "end\n"
    "-- an error whose message, past \"file:line: \", is exactly want (or contains it, for argument errors)\n"
    "local function err(label, want, f, ...)\n"
    "  local ok, e = pcall(f, ...)\n"
    "  local msg = type(e) == \"string\" and e:sub((S.find(e, \": \", 1, true) or -1) + 2) or tostring(e)\n"
    "  if ok then msg = \"no error\" end\n"
    "  check(not ok and (msg == want or S.find(msg, want, 1, true) ~= nil), label .. \": got \" .. msg .. \", want \" .. want)\n"
    "end\n"
    "\n"
    "-- find\n"
    "eq(\"find literal\", P(S.find(\"hello world\", \"o w\")), P(5, 7))\n"
    "eq(\"find no match\", P(S.find(\"hello\", \"xyz\")), P(nil))\n"
    "eq(\"find init\", P(S.find(\"hello\", \"l\", 4)), P(4, 4))\n"
    "eq(\"find negative init\", P(S.find(\"hello\", \"l\", -2)), P(4, 4))\n"
    "eq(\"find init below -len\", P(S.find(\"hello\", \"h\", -100)), P(1, 1))\n"
    "eq(\"find init 0\", P(S.find(\"hello\", \"h\", 0)), P(1, 1))\n"
    "eq(\"find mininteger init\", P(S.find(\"hello\", \"h\", math.mininteger)), P(1, 1))\n"
    "eq(\"find maxinteger init\", P(S.find(\"hello\", \"h\", math.maxinteger)), P(nil))\n"
    "eq(\"find init len+1, empty\", P(S.find(\"hello\", \"\", 6)), P(6, 5))\n"
    "eq(\"find init len+2, empty\", P(S.find(\"hello\", \"\", 7)), P(nil))\n"
    "eq(\"find init len+1, empty pattern match\", P(S.find(\"hello\", \"()\", 6)), P(6, 5, 6))\n"
    "eq(\"find float init\", P(S.find(\"hello\", \"l\", 4.0)), P(4, 4))\n"
    "eq(\"find string init\", P(S.find(\"hello\", \"l\", \"4\")), P(4, 4))\n"
    "eq(\"find number subject\", P(S.find(12345, 34)), P(3, 4))\n"
    "eq(\"find plain\", P(S.find(\"a.b\", \".\", 1, true)), P(2, 2))\n"
    "eq(\"find plain specials\", P(S.find(\"x(%a*)y\", \"(%a*)\", 1, true)), P(2, 6))\n"
    "eq(\"find plain empty\", P(S.find(\"abc\", \"\", 2, true)), P(2, 1))\n"
    "eq(\"find plain truthy 4th\", P(S.find(\"a+b\", \"+\", 1, \"yes\")), P(2, 2))\n"
    "eq(\"find ')' is plain text\", P(S.find(\"a)b\", \")\")), P(2, 2))\n"
    "eq(\"find ']' is plain text\", P(S.find(\"a]b\", \"]\")), P(2, 2))\n"
    "eq(\"find captures\", P(S.find(\"key = val\", \"(%w+)%s*=%s*(%w+)\")), P(1, 9, \"key\", \"val\"))\n"
    "eq(\"find position captures\", P(S.find(\"hello\", \"()ll()\")), P(3, 4, 3, 5))\n"
    "check(math.type(select(3, S.find(\"hello\", \"()ll\"))) == \"integer\", \"position capture is an integer\")\n"
    "check(math.type(S.find(\"hello\", \"l\")) == \"integer\", \"find positions are integers\")\n"
    "eq(\"find zero in subject and pattern\", P(S.find(\"a\" .. Z .. \"b\", Z .. \"b\")), P(2, 3))\n"
    "eq(\"find zero with specials\", P(S.find(\"a\" .. Z .. \"b\", Z .. \"%a\")), P(2, 3))\n"
    "eq(\"find zero in set\", P(S.find(\"ab\" .. Z .. \"c\", \"[\" .. Z .. \"]\")), P(3, 3))\n"
    "eq(\"find escaped literal\", P(S.find(\"a.b.c\", \"%.c\")), P(4, 5))\n"
    "eq(\"find escaped literal $\", P(S.find(\"a.b.c\", \"b%.c$\")), P(3, 5))\n"
    "eq(\"find literal not at end\", P(S.find(\"abab\", \"ab$\")), P(3, 4))\n"
    "eq(\"find anchored literal at init\", P(S.find(\"xab\", \"^ab\", 2)), P(2, 3))\n"
    "eq(\"find anchored literal\", P(S.find(\"xab\", \"^ab\")), P(nil))\n"
    "\n"
    "-- match\n"
    "eq(\"match whole\", P(S.match(\"hello world\", \"o w\")), P(\"o w\"))\n"
    "eq(\"match captures\", P(S.match(\"2024-06-01\", \"(%d+)-(%d+)-(%d+)\")), P(\"2024\", \"06\", \"01\"))\n"
    "eq(\"match init\", P(S.match(\"abcabc\", \"a.\", 3)), P(\"ab\"))\n"
    "eq(\"match negative init\", P(S.match(\"abcabc\", \".\", -1)), P(\"c\"))\n"
    "eq(\"match init past end\", P(S.match(\"abc\", \".\", 10)), P(nil))\n"
    "eq(\"match empty at end\", P(S.match(\"abc\", \"()$\")), P(4))\n"
    "eq(\"match dot matches zero\", P(S.match(Z, \".\")), P(Z))\n"
    "\n"
    "-- classes\n"
    "eq(\"%a\", P(S.match(\"12ab34\", \"%a+\")), P(\"ab\"))\n"
    "eq(\"%A\", P(S.match(\"ab12cd\", \"%A+\")), P(\"12\"))\n"
    "eq(\"%d\", P(S.match(\"ab12cd\", \"%d+\")), P(\"12\"))\n"
    "eq(\"%D\", P(S.match(\"12ab34\", \"%D+\")), P(\"ab\"))\n"
    "eq(\"%l\", P(S.match(\"ABcdEF\", \"%l+\")), P(\"cd\"))\n"
    "eq(\"%L\", P(S.match(\"abCDef\", \"%L+\")), P(\"CD\"))\n"
    "eq(\"%u\", P(S.match(\"abCDef\", \"%u+\")), P(\"CD\"))\n"
    "eq(\"%U\", P(S.match(\"ABcdEF\", \"%U+\")), P(\"cd\"))\n"
    "eq(\"%s\", P(S.match(\"a \\t\\nb\", \"%s+\")), P(\" \\t\\n\"))\n"
    "eq(\"%S\", P(S.match(\"  ab  \", \"%S+\")), P(\"ab\"))\n"
    "eq(\"%w\", P(S.match(\"-a1_\", \"%w+\")), P(\"a1\"))\n"
    "eq(\"%W\", P(S.match(\"a-+b\", \"%W+\")), P(\"-+\"))\n"
    "eq(\"%x\", P(S.match(\"xyz0fFg\", \"%x+\")), P(\"0fF\"))\n"
    "eq(\"%X\", P(S.match(\"0fxyz1\", \"%X+\")), P(\"xyz\"))\n"
    "eq(\"%p\", P(S.match(\"ab,.;cd\", \"%p+\")), P(\",.;\"))\n"
    "eq(\"%P\", P(S.match(\",.ab;\", \"%P+\")), P(\"ab\"))\n"
    "eq(\"%c\", P(S.match(\"a\\1\\2b\", \"%c+\")), P(\"\\1\\2\"))\n"
    "eq(\"%c matches zero\", P(S.match(\"a\" .. Z .. \"b\", \"%c\")), P(Z))\n"
    "eq(\"%C\", P(S.match(\"\\1ab\\2\", \"%C+\")), P(\"ab\"))\n"
    "eq(\"%g\", P(S.match(\"  ab  \", \"%g+\")), P(\"ab\"))\n"
    "eq(\"%G\", P(S.match(\"ab  cd\", \"%G+\")), P(\"  \"))\n"
    "eq(\"%z (deprecated, still in 5.4) is the zero byte\", P(S.match(\"a\" .. Z .. \"z\", \"%z\")), P(Z))\n"
    "eq(\"%Z\", P(S.match(Z .. \"ab\" .. Z, \"%Z+\")), P(\"ab\"))\n"
    "eq(\"%y is a plain y\", P(S.match(\"xyz\", \"%y\")), P(\"y\"))\n"
    "eq(\"escaped punctuation\", P(S.match(\"a+b\", \"%+\")), P(\"+\"))\n"
    "eq(\"escaped %\", P(S.match(\"50%\", \"%d+%%\")), P(\"50%\"))\n"
    "\n"
    "-- sets\n"
    "eq(\"set range\", P(S.match(\"xyz123\", \"[a-y]+\")), P(\"xy\"))\n"
    "eq(\"set class\", P(S.match(\"ab12_-\", \"[%d_]+\")), P(\"12_\"))\n"
    "eq(\"set complement\", P(S.match(\"abc123\", \"[^%a]+\")), P(\"123\"))\n"
    "eq(\"set ']' first\", P(S.match(\"a]b\", \"[]]\")), P(\"]\"))\n"
    "eq(\"set '^]' first\", P(S.match(\"]]ab\", \"[^]]+\")), P(\"ab\"))\n"
    "eq(\"set '-' first\", P(S.match(\"a-b\", \"[-]\")), P(\"-\"))\n"
    "eq(\"set '-' last\", P(S.match(\"-a-b\", \"[a-]+\")), P(\"-a-\"))\n"
    "eq(\"set '%]'\", P(S.match(\"a]b\", \"[%]]\")), P(\"]\"))\n"
    "eq(\"set '-' after a class\", P(S.match(\"!a-z\", \"[%a-]+\")), P(\"a-z\"))\n"
    "eq(\"set '^' not first\", P(S.match(\"a^b\", \"[b^]+\")), P(\"^b\"))\n"
    "eq(\"set high bytes\", P(S.match(\"a\\200\\201b\", \"[\\128-\\255]+\")), P(\"\\200\\201\"))\n"
    "eq(\"set range with '%'\", P(S.match(\"a%b\", \"[%%-a]+\")), P(\"a%\"))\n"
    "\n"
    "-- quantifiers\n"
    "eq(\"* greedy\", P(S.match(\"aaab\", \"a*\")), P(\"aaa\"))\n"
    "eq(\"* empty\", P(S.match(\"baaa\", \"a*\")), P(\"\"))\n"
    "eq(\"+\", P(S.match(\"baaa\", \"a+\")), P(\"aaa\"))\n"
    "eq(\"- lazy\", P(S.match(\"<a><b>\", \"<(.-)>\")), P(\"a\"))\n"
    "eq(\"* backtracks\", P(S.match(\"<a><b>\", \"<(.*)>\")), P(\"a><b\"))\n"
    "eq(\"?\", P(S.gsub(\"color colour\", \"colou?r\", \"C\")), P(\"C C\", 2))\n"
    "eq(\"? backtracks\", P(S.match(\"ab\", \"a?ab\")), P(\"ab\"))\n"
    "eq(\"quantifier first is literal\", P(S.find(\"a*b\", \"*b\")), P(2, 3))\n"
    "\n"
    "-- anchors\n"
    "eq(\"^\", P(S.find(\"aab\", \"^b\")), P(nil))\n"
    "eq(\"^ ok\", P(S.find(\"baa\", \"^b\")), P(1, 1))\n"
    "eq(\"$\", P(S.find(\"abab\", \"ab$\")), P(3, 4))\n"
    "eq(\"^...$\", P(S.match(\" x \", \"^%s*(.-)%s*$\")), P(\"x\"))\n"
    "eq(\"$ not last is literal\", P(S.find(\"a$b\", \"a$b\")), P(1, 3))\n"
    "eq(\"^ not first is literal\", P(S.match(\"a^b\", \"a^b\")), P(\"a^b\"))\n"
    "eq(\"^ in gmatch is literal\", all(S.gmatch(\"^a^ab\", \"^a\")), P(\"^a\", \"|\", \"^a\", \"|\"))\n"
    "\n"
    "-- captures\n"
    "eq(\"nested captures\", P(S.match(\"abcd\", \"((a)(b))\")), P(\"ab\", \"a\", \"b\"))\n"
    "eq(\"empty capture\", P(S.match(\"ab\", \"a()()b\")), P(2, 2))\n"
    "eq(\"32 captures\", P(select(\"#\", S.match((\"a\"):rep(32), (\"(a)\"):rep(32)))), P(32))\n"
    "eq(\"back-reference\", P(S.match([[say \"hi\" 'x' now]], [[([\"'])(.-)%1]])), P('\"', \"hi\"))\n"
    "eq(\"back-reference to empty\", P(S.find(\"ab\", \"()(a*)%2b\")), P(2, 2, 2, \"\"))\n"
    "eq(\"back-reference repeats\", P(S.match(\"abab!\", \"(ab)%1!\")), P(\"ab\"))\n"
    "eq(\"back-reference to a position never matches\", P(S.find(\"aa\", \"()%1\")), P(nil))\n"
    "\n"
    "-- %b, %f\n"
    "eq(\"%b()\", P(S.match(\"f(a(b)c) d\", \"%b()\")), P(\"(a(b)c)\"))\n"
    "eq(\"%b unbalanced\", P(S.match(\"((a)\", \"^%b()\")), P(nil))\n"
    "eq(\"%b same delimiters\", P(S.match('x\"ab\"y', '%b\"\"')), P('\"ab\"'))\n"
    "eq(\"%b then more\", P(S.match(\"[x]y\", \"%b[]y\")), P(\"[x]y\"))\n"
    "eq(\"%f words\", all(S.gmatch(\"THE (quick) fox\", \"%f[%a]%a+\")), P(\"THE\", \"|\", \"quick\", \"|\", \"fox\", \"|\"))\n"
    "eq(\"%f at start\", P(S.find(\"abc\", \"%f[%a]\")), P(1, 0))\n"
    "eq(\"%f at end sees a zero\", P(S.find(\"abc\", \"%f[\" .. Z .. \"]\")), P(4, 3))\n"
    "eq(\"%f complement\", P(S.find(\"ab cd\", \"%f[^%a]\")), P(3, 2))\n"
    "\n"
    "-- gmatch\n"
    "eq(\"gmatch words\", all(S.gmatch(\"one two  three\", \"%a+\")), P(\"one\", \"|\", \"two\", \"|\", \"three\", \"|\"))\n"
    "eq(\"gmatch pairs\", all(S.gmatch(\"a=1, b=2\", \"(%w+)=(%w+)\")), P(\"a\", \"1\", \"|\", \"b\", \"2\", \"|\"))\n"
    "eq(\"gmatch init\", all(S.gmatch(\"abcabc\", \"()a\", 2)), P(4, \"|\"))\n"
    "eq(\"gmatch negative init\", all(S.gmatch(\"abcabc\", \"()a\", -3)), P(4, \"|\"))\n"
    "eq(\"gmatch init len+1\", all(S.gmatch(\"abc\", \"()\", 4)), P(4, \"|\"))\n"
    "eq(\"gmatch init past end\", all(S.gmatch(\"abc\", \"()\", 10)), P())\n"
    "eq(\"gmatch maxinteger init\", all(S.gmatch(\"abc\", \".\", math.maxinteger)), P())\n"
    "eq(\"gmatch empty matches\", all(S.gmatch(\"abc\", \"x*\")), P(\"\", \"|\", \"\", \"|\", \"\", \"|\", \"\", \"|\"))\n"
    "eq(\"gmatch no empty match right after a match\", all(S.gmatch(\"ab\", \"a*\")), P(\"a\", \"|\", \"\", \"|\"))\n"
    "do\n"
    "  local it = S.gmatch(\"ab\", \"a\")\n"
    "  it()\n"
    "  check(select(\"#\", it()) == 0 and select(\"#\", it()) == 0, \"an exhausted gmatch iterator returns nothing, again\")\n"
    "end\n"
    "\n"
    "-- gsub\n"
    "eq(\"gsub %0 %1 %%\", P(S.gsub(\"hello world\", \"(o)\", \"[%0%1%%]\")), P(\"hell[oo%] w[oo%]rld\", 2))\n"
    "eq(\"gsub %1 without captures\", P(S.gsub(\"abc\", \"b\", \"<%1>\")), P(\"a<b>c\", 1))\n"
    "eq(\"gsub position in replacement\", P(S.gsub(\"abc\", \"()b\", \"%1\")), P(\"a2c\", 1))\n"
    "eq(\"gsub number replacement\", P(S.gsub(\"abc\", \"b\", 5)), P(\"a5c\", 1))\n"
    "eq(\"gsub float replacement\", P(S.gsub(\"abc\", \"b\", 2.5)), P(\"a2.5c\", 1))\n"
    "eq(\"gsub table\", P(S.gsub(\"$name is $age\", \"%$(%w+)\", {name = \"Bob\", age = 42})), P(\"Bob is 42\", 2))\n"
    "eq(\"gsub table false keeps\", P(S.gsub(\"a b\", \"%w\", {a = false})), P(\"a b\", 2))\n"
    "eq(\"gsub table position key\", P(S.gsub(\"abc\", \"()b\", {[2] = \"X\"})), P(\"aXc\", 1))\n"
    "eq(\"gsub function\", P(S.gsub(\"abc\", \"%w\", function(c) return c:upper() .. \".\" end)), P(\"A.B.C.\", 3))\n"
    "eq(\"gsub function gets all captures\", P(S.gsub(\"a=1\", \"(%w)=()(%w)\", function(a, b, c)\n"
    "  return a .. math.type(b) .. b .. c end)), P(\"ainteger31\", 1))\n"
    "eq(\"gsub function nil keeps\", P(S.gsub(\"abc\", \"%w\", function() end)), P(\"abc\", 3))\n"
    "eq(\"gsub function number\", P(S.gsub(\"abc\", \"b\", function() return 7 end)), P(\"a7c\", 1))\n"
    "eq(\"gsub max n\", P(S.gsub(\"aaaa\", \"a\", \"b\", 2)), P(\"bbaa\", 2))\n"
    "eq(\"gsub max n 0\", P(S.gsub(\"aaaa\", \"a\", \"b\", 0)), P(\"aaaa\", 0))\n"
    "eq(\"gsub max n negative\", P(S.gsub(\"aaaa\", \"a\", \"b\", -1)), P(\"aaaa\", 0))\n"
    "eq(\"gsub max n string\", P(S.gsub(\"aaaa\", \"a\", \"b\", \"3\")), P(\"bbba\", 3))\n"
    "eq(\"gsub empty pattern\", P(S.gsub(\"abc\", \"\", \"-\")), P(\"-a-b-c-\", 4))\n"
    "eq(\"gsub empty after match\", P(S.gsub(\"abc\", \"%w*\", \"-\")), P(\"-\", 1))\n"
    "eq(\"gsub empty matches between\", P(S.gsub(\"a,b\", \"%a*\", \"x\")), P(\"x,x\", 2))\n"
    "eq(\"gsub anchored\", P(S.gsub(\"aaa\", \"^a\", \"b\")), P(\"baa\", 1))\n"
    "eq(\"gsub anchored empty\", P(S.gsub(\"abc\", \"^\", \">\")), P(\">abc\", 1))\n"
    "eq(\"gsub anchored no match\", P(S.gsub(\"abc\", \"^b\", \">\")), P(\"abc\", 0))\n"
    "eq(\"gsub end anchor\", P(S.gsub(\"abab\", \"ab$\", \"X\")), P(\"abX\", 1))\n"
    "eq(\"gsub zeros\", P(S.gsub(\"a\" .. Z .. \"b\" .. Z, Z, \"0\")), P(\"a0b0\", 2))\n"
    "eq(\"gsub escaped literal\", P(S.gsub(\"a.b.c\", \"%.\", \"/\")), P(\"a/b/c\", 2))\n"
    "eq(\"gsub literal with n\", P(S.gsub(\"a.b.c\", \"%.\", \"/\", 1)), P(\"a/b.c\", 1))\n"
    "\n"
    "-- errors\n"
    "err(\"ends with %\", \"malformed pattern (ends with '%')\", S.find, \"abc\", \"a%\")\n"
    "err(\"missing ]\", \"malformed pattern (missing ']')\", S.find, \"abc\", \"[a\")\n"
    "err(\"missing ] after ^\", \"malformed pattern (missing ']')\", S.find, \"abc\", \"[^\")\n"
    "err(\"[] is unclosed\", \"malformed pattern (missing ']')\", S.match, \"abc\", \"[]\")\n"
    "err(\"missing %b args\", \"malformed pattern (missing arguments to '%b')\", S.find, \"abc\", \"%b\")\n"
    "err(\"one %b arg\", \"malformed pattern (missing arguments to '%b')\", S.find, \"abc\", \"%ba\")\n"
    "err(\"%f without [\", \"missing '[' after '%f' in pattern\", S.find, \"abc\", \"%fa\")\n"
    "err(\"%f at end\", \"missing '[' after '%f' in pattern\", S.find, \"abc\", \"%f\")\n"
    "err(\"back-reference to nothing\", \"invalid capture index %1\", S.find, \"abc\", \"%1\")\n"
    "err(\"back-reference %0\", \"invalid capture index %0\", S.find, \"abc\", \"%0\")\n"
    "err(\"back-reference to an open capture\", \"invalid capture index %1\", S.find, \"abc\", \"(a%1)\")\n"
    "err(\"unbalanced )\", \"invalid pattern capture\", S.match, \"abc\", \")\")\n"
    "err(\"unfinished capture\", \"unfinished capture\", S.match, \"abc\", \"(a\")\n"
    "err(\"unfinished capture in find\", \"unfinished capture\", S.find, \"abc\", \"(b\")\n"
    "err(\"too many captures\", \"too many captures\", S.match, (\"a\"):rep(40), (\"(a)\"):rep(33))\n"
    "err(\"replacement %2\", \"invalid capture index %2\", S.gsub, \"abc\", \"b\", \"%2\")\n"
    "err(\"replacement %2 with one capture\", \"invalid capture index %2\", S.gsub, \"abc\", \"(b)\", \"%2\")\n"
    "err(\"replacement %x\", \"invalid use of '%' in replacement string\", S.gsub, \"abc\", \"b\", \"%x\")\n"
    "err(\"replacement ending with %\", \"invalid use of '%' in replacement string\", S.gsub, \"abc\", \"b\", \"x%\")\n"
    "err(\"replacement value table\", \"invalid replacement value (a table)\", S.gsub, \"abc\", \"b\", {b = {}})\n"
    "err(\"replacement value boolean\", \"invalid replacement value (a boolean)\", S.gsub, \"abc\", \"b\", function() return true end)\n"
    "err(\"replacement unfinished capture\", \"unfinished capture\", S.gsub, \"abc\", \"(b\", {})\n"
    "err(\"nesting depth\", \"pattern too complex\", S.find, (\"a\"):rep(300), (\"a?\"):rep(250))\n"
    "err(\"gmatch error in iterator\", \"malformed pattern (ends with '%')\", S.gmatch(\"abc\", \"%\"))\n"
    "err(\"find arg 1\", \"bad argument #1 to\", function() return S.find() end)\n"
    "err(\"find arg 1 type\", \"(string expected, got table)\", function() return S.find({}, \"a\") end)\n"
    "err(\"find arg 2\", \"bad argument #2 to 'find' (string expected, got no value)\", function() return S.find(\"a\") end)\n"
    "err(\"find arg 3\", \"bad argument #3 to 'find' (number expected, got string)\", function() return S.find(\"a\", \"a\", \"x\") end)\n"
    "err(\"find arg 3 float\", \"(number has no integer representation)\", function() return S.find(\"a\", \"a\", 1.5) end)\n"
    "err(\"match arg 3\", \"bad argument #3 to 'match' (number expected, got boolean)\", function() return S.match(\"a\", \"a\", true) end)\n"
    "err(\"gmatch arg 2\", \"bad argument #2 to 'gmatch' (string expected, got nil)\", function() return S.gmatch(\"a\", nil) end)\n"
    "err(\"gmatch arg 3\", \"bad argument #3 to 'gmatch' (number has no integer representation)\", function() return S.gmatch(\"a\", \"a\", 0.5) end)\n"
    "err(\"gsub arg 3\", \"bad argument #3 to 'gsub' (string/function/table expected, got boolean)\", function() return S.gsub(\"a\", \"a\", true) end)\n"
    "err(\"gsub arg 3 absent\", \"bad argument #3 to 'gsub' (string/function/table expected, got no value)\", function() return S.gsub(\"a\", \"a\") end)\n"
    "err(\"gsub arg 4 before arg 3\", \"bad argument #4 to 'gsub' (number expected, got table)\", function() return S.gsub(\"a\", \"a\", nil, {}) end)\n"
    "err(\"gsub arg 4 float\", \"bad argument #4 to 'gsub' (number has no integer representation)\", function() return S.gsub(\"a\", \"a\", \"b\", 1.5) end)\n"
    "err(\"method on bad self\", \"calling 'find' on bad self\", function() local t = {find = S.find}; return t:find(\"a\") end)\n"
    "\n";

static const char fuzz_lua[] =
    "-- Differential fuzzer: args (seed, cases); globals stock and bounded hold find/match/gmatch/gsub.\n"
    "-- Returns the number of cases run and the number of mismatches (the first few are printed).\n"
    "local seed, ncases = ...\n"
    "local stock, bounded = stock, bounded\n"
    "local sfmt, sgsub, concat, pack, unpack = string.format, stock.gsub, table.concat, table.pack, table.unpack\n"
    "math.randomseed(seed)\n"
    "local R = math.random\n"
    "local Z = string.char(0)\n"
    "local HI = string.char(200)\n"
    "\n"
    "local function pick(t) return t[R(#t)] end\n"
    "\n"
    "local SUBJ = {\"a\", \"a\", \"a\", \"b\", \"b\", \"c\", \"A\", \" \", \"1\", \"(\", \")\", \"[\", \"]\", \"%\", \".\", \"-\", \"^\", \"$\", Z, \"x\", \"\\n\", HI}\n"
    "local LIT = {\"a\", \"b\", \"c\", \"A\", \" \", \"1\", \"x\", Z, \"]\", \"^\", \"%%\", \"%.\", \"%(\", \"%)\", \"%[\", \"%]\", \"%-\", \"%^\", \"%$\",\n"
    "             \"%*\", \"%\" .. Z, HI}\n"
    "local CLS = {\"%a\", \"%c\", \"%d\", \"%g\", \"%l\", \"%p\", \"%s\", \"%u\", \"%w\", \"%x\", \"%A\", \"%C\", \"%D\", \"%G\", \"%L\", \"%P\", \"%S\",\n"
    "             \"%U\", \"%W\", \"%X\", \"%z\", \"%y\"}\n"
    "local SETCH = {\"a\", \"b\", \"c\", \"x\", \"A\", \"1\", \" \", \"^\", \"-\", \"]\", \"[\", \"(\", \")\", \"$\", \".\", Z, \"%\", HI}\n"
    "local RAW = {\"a\", \"b\", \"%\", \"[\", \"]\", \"^\", \"-\", \"(\", \")\", \"*\", \"+\", \"?\", \".\", \"$\", \"1\", \"f\", \"b\", Z}\n"
    "\n"
    "local function subject()\n"
    "  local t = {}\n"
    "  for i = 1, R(0, 10) do t[i] = pick(SUBJ) end\n"
    "  return concat(t)\n"
    "end\n"
    "\n"
    "local function set()\n"
    "  local t = {\"[\"}\n"
    "  if R(3) == 1 then t[#t + 1] = \"^\" end\n"
    "  if R(6) == 1 then t[#t + 1] = \"]\" end\n"
    "  if R(8) == 1 then t[#t + 1] = \"-\" end\n"
    "  for _ = 1, R(0, 4) do\n"
    "    local k = R(6)\n"
    "    if k == 1 then t[#t + 1] = pick({\"a\", \"b\", \"A\", \"0\", \"(\", Z}) .. \"-\" .. pick({\"c\", \"z\", \"a\", \"Z\", \"9\", \")\", HI})\n"
    "    elseif k == 2 then t[#t + 1] = pick(CLS)\n"
    "    elseif k == 3 then t[#t + 1] = \"%\" .. pick({\"]\", \"[\", \"-\", \"^\", \"%\", \"a\", Z})\n"
    "    else t[#t + 1] = pick(SETCH) end\n"
    "  end\n"
    "  if R(8) == 1 then t[#t + 1] = \"-\" end\n"
    "  if R(25) ~= 1 then t[#t + 1] = \"]\" end\n"
    "  return concat(t)\n"
    "end\n"
    "\n"
    "local nquant -- quantifiers so far: bounded so that stock cannot take long either\n"
    "local function single()\n"
    "  local k = R(10)\n"
    "  if k <= 4 then return pick(LIT)\n"
    "  elseif k == 5 then return \".\"\n"
    "  elseif k <= 7 then return pick(CLS)\n"
    "  else return set() end\n"
    "end\n"
    "\n"
    "local seq\n"
    "local function piece(depth)\n"
    "  local k = R(20)\n"
    "  if k <= 11 then\n"
    "    local it = single()\n"
    "    if nquant < 5 and R(2) == 1 then\n"
    "      nquant = nquant + 1\n"
    "      it = it .. pick({\"*\", \"+\", \"-\", \"?\"})\n"
    "    end\n"
    "    return it\n"
    "  elseif k <= 13 and depth < 2 then return \"(\" .. seq(depth + 1, R(0, 3)) .. \")\"\n"
    "  elseif k == 14 then return \"()\"\n"
    "  elseif k == 15 then return \"%b\" .. pick({\"()\", \"ab\", \"[]\", \"aa\", Z .. \"a\", \"a\"})\n"
    "  elseif k == 16 then return \"%f\" .. set()\n"
    "  elseif k == 17 then return \"%\" .. R(0, 9)\n"
    "  elseif k == 18 then return pick({\"(\", \")\", \"%f\", \"%fa\", \"%b\", \"[\", \"[^\", \"[a\", \"%\", \"$\", \"^\"})\n"
    "  else return pick(LIT) end\n"
    "end\n"
    "seq = function(depth, n)\n"
    "  local t = {}\n"
    "  for i = 1, n do t[i] = piece(depth) end\n"
    "  return concat(t)\n"
    "end\n"
    "\n"
    "local function pattern()\n"
    "  nquant = 0\n"
    "  if R(6) == 1 then -- raw characters: the parser's edge cases\n"
    "    local t = {}\n"
    "    for i = 1, R(0, 8) do t[i] = pick(RAW) end\n"
    "    return concat(t)\n"
    "  end\n"
    "  local p = seq(0, R(0, 5))\n"
    "  if R(4) == 1 then p = \"^\" .. p end\n"
    "  if R(4) == 1 then p = p .. \"$\" end\n"
    "  if R(30) == 1 then p = p .. \"%\" end\n"
    "  return p\n"
    "end\n"
    "\n"
    "local function init_value()\n"
    "  return pick({1, 2, 3, 4, -1, -2, -3, -5, 0, 9, 10, 11, 12, 100, -100, math.maxinteger, math.mininteger,\n"
    "               2.0, \"3\", 2.5, \"x\", false})\n"
    "end\n"
    "\n"
    "-- a replacement function whose result depends on its arguments only\n"
    "local function frepl(...)\n"
    "  local parts = {}\n"
    "  for i = 1, select(\"#\", ...) do\n"
    "    local v = select(i, ...)\n"
    "    parts[i] = (math.type(v) or type(v)) .. \"=\" .. tostring(v)\n"
    "  end\n"
    "  local key = concat(parts, \",\")\n"
    "  local h = #key % 7\n"
    "  if h == 0 then return nil\n"
    "  elseif h == 1 then return false\n"
    "  elseif h == 2 then return \"<\" .. key .. \">\"\n"
    "  elseif h == 3 then return #key\n"
    "  elseif h == 4 then return key, \"ignored\"\n"
    "  elseif h == 5 and #key > 20 then return {}\n"
    "  else return \"\" end\n"
    "end\n"
    "\n"
    "local function repl_value(s)\n"
    "  local k = R(13)\n"
    "  if k <= 5 then\n"
    "    local t = {}\n"
    "    for i = 1, R(0, 4) do\n"
    "      t[i] = pick({\"x\", \"-\", \"%0\", \"%1\", \"%2\", \"%3\", \"%%\", \"%%1\", \"<\", \"%9\", \"%a\", \"%\" .. Z, Z, \"%1%2\"})\n"
    "    end\n"
    "    local str = concat(t)\n"
    "    if R(15) == 1 then str = str .. \"%\" end\n"
    "    return str, sfmt(\"%q\", str)\n"
    "  elseif k == 6 then\n"
    "    local v = pick({7, 2.5, -0.0, 1e100, 3})\n"
    "    return v, (math.type(v) .. \" \" .. tostring(v))\n"
    "  elseif k <= 8 then\n"
    "    local t, d = {}, {}\n"
    "    for i = 1, #s do\n"
    "      for j = i, math.min(#s, i + 1) do\n"
    "        if R(2) == 1 then\n"
    "          local v = pick({\"T\", 42, 4.5, false, true, {}, \"%1\"})\n"
    "          t[s:sub(i, j)] = v\n"
    "          d[#d + 1] = sfmt(\"[%q]=%s\", s:sub(i, j), type(v) == \"string\" and sfmt(\"%q\", v) or tostring(v))\n"
    "        end\n"
    "      end\n"
    "    end\n"
    "    for i = 1, 12 do\n"
    "      if R(3) == 1 then\n"
    "        local v = pick({\"P\", false, 1})\n"
    "        t[i] = v\n"
    "        d[#d + 1] = sfmt(\"[%d]=%s\", i, tostring(v))\n"
    "      end\n"
    "    end\n"
    "    return t, \"{\" .. concat(d, \",\") .. \"}\"\n"
    "  elseif k <= 11 then return frepl, \"frepl\"\n"
    "  elseif k == 12 then return true, \"true\"\n"
    "  else return nil, \"nil\" end\n"
    "end\n"
    "\n"
    "local function n_value()\n"
    "  return pick({-1, 0, 1, 2, 3, 100, 2.5, \"2\", math.mininteger, math.maxinteger, 1.0})\n"
    "end\n"
    "\n"
    "-- calls through a local so both report the same function name in argument errors\n"
    "local function call(fn, ...)\n"
    "  local r = pack(fn(...))\n"
    "  return r\n"
    "end\n"
    "local function norm(e)\n"
    "  if type(e) ~= \"string\" then return \"non-string error: \" .. tostring(e) end\n"
    "  return (sgsub(e, \"^[^\\n]-:%d+: \", \"\"))\n"
    "end\n"
    "local function run(fn, a)\n"
    "  local ok, r = pcall(call, fn, unpack(a, 1, a.n))\n"
    "  if ok then return r end\n"
    "  return {err = norm(r)}\n"
    "end\n"
    "local function same(x, y)\n"
    "  if x.err or y.err then return x.err == y.err end\n"
    "  if x.n ~= y.n then return false end\n"
    "  for i = 1, x.n do\n"
    "    local a, b = x[i], y[i]\n"
    "    if type(a) ~= type(b) or math.type(a) ~= math.type(b) or a ~= b then return false end\n"
    "  end\n"
    "  return true\n"
    "end\n"
    "local function show_val(v)\n"
    "  if type(v) == \"string\" then return sfmt(\"%q\", v) end\n"
    "  if type(v) == \"number\" then return math.type(v) .. \" \" .. tostring(v) end\n"
    "  return tostring(v)\n"
    "end\n"
    "local function show(r)\n"
    "  if r.err then return \"error: \" .. r.err end\n"
    "  local t = {}\n"
    "  for i = 1, r.n do t[i] = show_val(r[i]) end\n"
    "  return \"(\" .. concat(t, \", \") .. \")\"\n"
    "end\n"
    "local function show_args(a, desc)\n"
    "  local t = {}\n"
    "  for i = 1, a.n do t[i] = desc and desc[i] or show_val(a[i]) end\n"
    "  return concat(t, \", \")\n"
    "end\n"
    "\n"
    "local function run_gmatch(gm, a)\n"
    "  local out = {}\n"
    "  local r0 = run(gm, a)\n"
    "  if r0.err then return {r0} end\n"
    "  local it = r0[1]\n"
    "  for _ = 1, 40 do\n"
    "    local r = run(it, {n = 0})\n"
    "    out[#out + 1] = r\n"
    "    if r.err or r.n == 0 then break end\n"
    "  end\n"
    "  return out\n"
    "end\n"
    "\n"
    "local bad, shown = 0, 0\n"
    "local function mismatch(what, a, desc, got, want)\n"
    "  bad = bad + 1\n"
    "  if shown < 20 then\n"
    "    shown = shown + 1\n"
    "    print(sfmt(\"MISMATCH %s(%s)\\n  bounded: %s\\n  stock:   %s\", what, show_args(a, desc), got, want))\n"
    "  end\n"
    "end\n"
    "\n"
    "local counts = {find = 0, match = 0, gmatch = 0, gsub = 0}\n"
    "local outcomes = {error = 0, [\"no match\"] = 0, match = 0} -- of stock's results, to show what is covered\n"
    "local function tally(r)\n"
    "  local k = r.err and \"error\" or ((r.n == 0 or r[1] == nil) and \"no match\" or \"match\")\n"
    "  outcomes[k] = outcomes[k] + 1\n"
    "end\n"
    "for _ = 1, ncases do\n"
    "  local s, p = subject(), pattern()\n"
    "  if R(60) == 1 then s = pick({1234, 12.5, nil, {}, -7}) end\n"
    "  if R(80) == 1 then p = pick({12, nil, {}, true}) end\n"
    "  local a = {n = 2, s, p}\n"
    "  local desc\n"
    "  local which = pick({\"find\", \"find\", \"match\", \"gmatch\", \"gsub\", \"gsub\"})\n"
    "  counts[which] = counts[which] + 1\n"
    "  if which == \"gsub\" then\n"
    "    local rv, rd = repl_value(type(s) == \"string\" and s or \"\")\n"
    "    a[3], a.n = rv, 3\n"
    "    desc = {show_val(a[1]), show_val(a[2]), rd}\n"
    "    if rd == \"nil\" and R(2) == 1 then a.n = 2 end\n"
    "    if R(3) == 1 then a[4], a.n = n_value(), 4 end\n"
    "  else\n"
    "    if R(3) ~= 1 then a[3], a.n = init_value(), 3 end\n"
    "    if which == \"find\" and R(3) == 1 then a[3], a[4], a.n = a.n == 3 and a[3] or 1, pick({true, false, 1}), 4 end\n"
    "    if R(10) == 1 then a[a.n + 1], a.n = nil, a.n + 1 end\n"
    "  end\n"
    "  if which == \"gmatch\" then\n"
    "    local g, w = run_gmatch(bounded.gmatch, a), run_gmatch(stock.gmatch, a)\n"
    "    tally(w[1])\n"
    "    local ok = #g == #w\n"
    "    for i = 1, #g do ok = ok and same(g[i], w[i]) end\n"
    "    if not ok then\n"
    "      local gs, ws = {}, {}\n"
    "      for i = 1, #g do gs[i] = show(g[i]) end\n"
    "      for i = 1, #w do ws[i] = show(w[i]) end\n"
    "      mismatch(\"gmatch\", a, desc, concat(gs, \" \"), concat(ws, \" \"))\n"
    "    end\n"
    "  else\n"
    "    local g, w = run(bounded[which], a), run(stock[which], a)\n"
    "    tally(w)\n"
    "    if not same(g, w) then mismatch(which, a, desc, show(g), show(w)) end\n"
    "  end\n"
    "end\n"
    "print(sfmt(\"fuzz: seed %d, %d cases (find %d, match %d, gmatch %d, gsub %d; stock's first result: %d errors, \" ..\n"
    "           \"%d no match, %d matches), %d mismatches\", seed, ncases, counts.find, counts.match, counts.gmatch,\n"
    "           counts.gsub, outcomes.error, outcomes[\"no match\"], outcomes.match, bad))\n"
    "return ncases, bad\n"
    "\n";

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* check(ok, label) for the Lua drivers: one check each. */
static int l_check(lua_State *L) {
  int ok = lua_toboolean(L, 1);
  if (!check_note(ok)) fprintf(stderr, "  CHECK failed (Lua): %s\n", luaL_optstring(L, 2, "?"));
  return 0;
}

/* Loads src as chunk `name`, calls it with the nargs values on top of the stack and leaves nres
 * results. Returns 0, or -1 after printing the error (nothing left on the stack then). */
static int run(lua_State *L, const char *src, const char *name, int nargs, int nres, double *ms) {
  if (luaL_loadbuffer(L, src, strlen(src), name) != LUA_OK) {
    fprintf(stderr, "  load %s: %s\n", name, lua_tostring(L, -1));
    lua_pop(L, 1 + nargs);
    return -1;
  }
  lua_insert(L, -1 - nargs);
  double t0 = now_ms();
  int rc = lua_pcall(L, nargs, nres, 0);
  if (ms) *ms = now_ms() - t0;
  if (rc != LUA_OK) {
    fprintf(stderr, "  run %s: %s\n", name, lua_tostring(L, -1));
    lua_pop(L, 1);
    return -1;
  }
  return 0;
}

/* Runs a chunk named "@script.lua" that returns pcall(...) of something that must be refused, and
 * checks the error is exactly want. Returns the time it took. */
static double refused(lua_State *L, const char *src, const char *want) {
  double ms = 0;
  if (!CHECK(run(L, src, "@script.lua", 0, 2, &ms) == 0)) return ms;
  CHECK(!lua_toboolean(L, -2));
  const char *msg = lua_tostring(L, -1);
  CHECK_STR(msg, want);
  lua_pop(L, 2);
  return ms;
}

/* The budget error's text for a call of fname on a subject of len bytes with the default limits. */
static const char *budget_msg(char *buf, size_t size, const char *where, const char *fname, long len,
                              const char *shown) {
  snprintf(buf, size,
           "%s %s: pattern too complex: gave up after %ld steps on a %ld-byte subject (pattern \"%s\"; "
           "every '*', '+' or '-' that can backtrack multiplies the work)",
           where, fname, SG_PAT_BASE_STEPS + SG_PAT_STEPS_PER_BYTE * len, len, shown);
  return buf;
}

static void test_install(void) {
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  CHECK(run(L, "stock = {find = string.find, match = string.match}", "=setup", 0, 0, NULL) == 0);
  CHECK_EQ_INT(sg_strpat_install(L), 0);
  CHECK(run(L,
            "assert(string.find ~= stock.find and string.match ~= stock.match)\n"
            "assert(('').find == string.find and ('').gsub == string.gsub and ('').gmatch == string.gmatch)\n"
            "assert(getmetatable('').__index == string and package.loaded.string.find == string.find)",
            "=install", 0, 0, NULL) == 0);
  lua_close(L);

  /* a sandbox without the global `string`: methods are still covered through the metatable */
  L = luaL_newstate();
  luaL_openlibs(L);
  CHECK(run(L, "orig = ('').find; string = nil", "=setup", 0, 0, NULL) == 0);
  CHECK_EQ_INT(sg_strpat_install(L), 0);
  CHECK(run(L, "assert(('').find ~= orig); assert(('xaay'):find('a+') == 2)", "=nostring", 0, 0, NULL) == 0);
  lua_close(L);

  /* no string library at all */
  L = luaL_newstate();
  CHECK_EQ_INT(sg_strpat_install(L), -1);
  CHECK_EQ_INT(lua_gettop(L), 0);
  lua_close(L);
}

static void test_hand(lua_State *L) {
  const char *libs[] = {"stock", "bounded"};
  for (int i = 0; i < 2; i++) {
    int before = check_failed;
    lua_getglobal(L, libs[i]);
    CHECK(run(L, hand_lua, "=hand", 1, 0, NULL) == 0);
    if (check_failed > before) fprintf(stderr, "  (hand-written cases with the %s functions)\n", libs[i]);
  }
}

static void test_fuzz(lua_State *L) {
  const char *e;
  long seed = (e = getenv("STRPAT_SEED")) ? strtol(e, NULL, 10) : FUZZ_SEED;
  long cases = (e = getenv("STRPAT_CASES")) ? strtol(e, NULL, 10) : FUZZ_CASES;
  printf("fuzz seed %ld, %ld cases\n", seed, cases);
  fflush(stdout);
  lua_pushinteger(L, seed);
  lua_pushinteger(L, cases);
  double ms;
  if (!CHECK(run(L, fuzz_lua, "=fuzz", 2, 2, &ms) == 0)) return;
  CHECK_EQ_INT(lua_tointeger(L, -2), cases);
  CHECK_EQ_INT(lua_tointeger(L, -1), 0); /* mismatches */
  lua_pop(L, 2);
  printf("fuzz: %.0f ms\n", ms);
}

/* Edges where only a comparison with stock tells the truth: the nesting limit at its boundary, with
 * items that recurse once (x?, x*) and captures that recurse on '(' and on ')'. */
static void test_depth(lua_State *L) {
  CHECK(run(L,
            "local function norm(ok, ...) if ok then return table.concat({...}, ',') end\n"
            "  return (stock.gsub((...), '^[^\\n]-:%d+: ', '')) end\n"
            "for n = 190, 210 do\n"
            "  local s, p = ('a'):rep(300), ('a?'):rep(n)\n"
            "  local want, got = norm(pcall(stock.find, s, p)), norm(pcall(bounded.find, s, p))\n"
            "  check(want == got, 'depth ' .. n .. ': ' .. got .. ' vs stock ' .. want)\n"
            "  p = ('(a?)'):rep(20) .. ('a-'):rep(n - 60)\n"
            "  want, got = norm(pcall(stock.match, s, p)), norm(pcall(bounded.match, s, p))\n"
            "  check(want == got, 'depth with captures ' .. n .. ': ' .. got .. ' vs stock ' .. want)\n"
            "end",
            "=depth", 0, 0, NULL) == 0);
}

static void test_bounds(lua_State *L) {
  char want[512];
  double ms;

  /* the explosive case, from each function, with the script's line */
  ms = refused(L,
               "local s = string.rep('a', 3000)\n"
               "local p = string.rep('a*', 12) .. 'b'\n"
               "return pcall(function()\n"
               "  local i = s:find(p)\n"
               "  return i\n"
               "end)\n",
               budget_msg(want, sizeof want, "script.lua:4:", "string.find", 3000, "a*a*a*a*a*a*a*a*a*a*a*a*b"));
  printf("explosive find refused in %.1f ms\n", ms);
  CHECK(ms < EXPLOSIVE_MS);
  ms = refused(L,
               "local s = string.rep('a', 3000)\n"
               "local p = string.rep('a*', 12) .. 'b'\n"
               "return pcall(string.match, s, p)\n",
               budget_msg(want, sizeof want, "script.lua:3:", "string.match", 3000, "a*a*a*a*a*a*a*a*a*a*a*a*b"));
  CHECK(ms < EXPLOSIVE_MS);
  ms = refused(L,
               "local s = string.rep('a', 3000)\n"
               "return pcall(function()\n"
               "  local n = 0\n"
               "  for w in s:gmatch(('a*'):rep(12) .. 'b') do n = n + 1 end\n"
               "end)\n",
               budget_msg(want, sizeof want, "script.lua:4:", "string.gmatch", 3000, "a*a*a*a*a*a*a*a*a*a*a*a*b"));
  CHECK(ms < EXPLOSIVE_MS);
  ms = refused(L,
               "local s = string.rep('a', 3000)\n"
               "\n"
               "return pcall(string.gsub, s, ('a*'):rep(12) .. 'b', string.upper)\n",
               budget_msg(want, sizeof want, "script.lua:3:", "string.gsub", 3000, "a*a*a*a*a*a*a*a*a*a*a*a*b"));
  CHECK(ms < EXPLOSIVE_MS);
  /* a long pattern is cut at 40 characters, odd bytes escaped */
  refused(L,
          "return pcall(string.find, '\\0\"' .. ('a'):rep(3000), '\\0\"' .. ('a-'):rep(30) .. 'b')\n",
          budget_msg(want, sizeof want, "script.lua:1:", "string.find", 3002,
                     "\\000\\\"a-a-a-a-a-a-a-a-a-a-a-a-a-a-a-a-a-a-a-..."));
  /* the nesting limit keeps stock's message, at the script's line */
  refused(L, "\nreturn pcall(string.find, ('a'):rep(300), ('a?'):rep(250))\n", "script.lua:2: pattern too complex");

  /* quadratic shapes other than quantifiers are charged too (their budgets grow with the subject:
   * no tight time bound) */
  ms = refused(L, "return pcall(string.find, ('('):rep(100000), '%b()')\n",
               budget_msg(want, sizeof want, "script.lua:1:", "string.find", 100000, "%b()"));
  printf("quadratic %%b on 100 kB refused in %.1f ms\n", ms);
  CHECK(ms < LINEAR_MS);
  ms = refused(L, "return pcall(string.find, ('a'):rep(100000), '(a*)%1b')\n",
               budget_msg(want, sizeof want, "script.lua:1:", "string.find", 100000, "(a*)%1b"));
  printf("quadratic back-reference on 100 kB refused in %.1f ms\n", ms);
  CHECK(ms < LINEAR_MS);
  ms = refused(L, "return pcall(string.gsub, ('x'):rep(100000), '', ('%0'):rep(10000))\n",
               budget_msg(want, sizeof want, "script.lua:1:", "string.gsub", 100000,
                          "")); /* the empty pattern: the replacement did the work */
  printf("quadratic replacement on 100 kB refused in %.1f ms\n", ms);
  CHECK(ms < LINEAR_MS);
  ms = refused(L, "return pcall(string.find, ('b'):rep(100000), '[' .. ('a'):rep(100000) .. ']')\n",
               budget_msg(want, sizeof want, "script.lua:1:", "string.find", 100000,
                          "[aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa..."));
  printf("a 100 kB set on 100 kB refused in %.1f ms\n", ms);
  CHECK(ms < LINEAR_MS);
  ms = refused(L, "return pcall(string.find, ('b'):rep(100000), '%f[' .. ('a'):rep(100000) .. ']')\n",
               budget_msg(want, sizeof want, "script.lua:1:", "string.find", 100000,
                          "%f[aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa..."));
  printf("a 100 kB frontier set on 100 kB refused in %.1f ms\n", ms);
  CHECK(ms < LINEAR_MS);

  /* the setter */
  sg_strpat_set_limits(1000, 0);
  refused(L, "return pcall(string.find, ('a'):rep(100), ('a*'):rep(2) .. 'b')\n",
          "script.lua:1: string.find: pattern too complex: gave up after 1000 steps on a 100-byte subject "
          "(pattern \"a*a*b\"; every '*', '+' or '-' that can backtrack multiplies the work)");
  sg_strpat_set_limits(-1, -1);
  CHECK(run(L, "assert(string.find(('a'):rep(100), ('a*'):rep(2) .. 'b') == nil)", "=restored", 0, 0, NULL) == 0);

  /* worst cases for a naive literal search, on 30 MB: linear */
  CHECK(run(L,
            "big = ('a'):rep(30000000); needle = ('a'):rep(15000000) .. 'b'\n"
            "needle_esc = ('a'):rep(15000000) .. '%.'; needle_end = needle .. '$'",
            "=setup", 0, 0, NULL) == 0);
  const char *literal[] = {
      "assert(string.find(big, needle, 1, true) == nil)",
      "assert(big:find(needle) == nil)",
      "assert(big:match(needle_esc) == nil)",
      "assert(big:find(needle_end, 2) == nil)",
      "local n = 0; for w in big:gmatch(needle) do n = n + 1 end; assert(n == 0)",
      "local r, n = big:gsub(needle, 'x'); assert(n == 0 and r == big)",
  };
  for (size_t i = 0; i < sizeof literal / sizeof *literal; i++) {
    CHECK(run(L, literal[i], "=literal", 0, 0, &ms) == 0);
    printf("30 MB literal: %.0f ms: %s\n", ms, literal[i]);
    CHECK(ms < LINEAR_MS);
  }
  CHECK(run(L, "big, needle, needle_esc, needle_end = nil; collectgarbage()", "=cleanup", 0, 0, NULL) == 0);

  /* ordinary patterns on 4 MB of text are not refused */
  const char *make_text =
      "local size = ...\n"
      "local words, parts, n = {'alpha', 'beta', 'gamma', 'delta', 'epsilon'}, {}, 0\n"
      "local i = 0\n"
      "while n < size do\n"
      "  i = i + 1\n"
      "  local line = 'key' .. i .. '=value' .. i .. ' ' .. words[i % 5 + 1] .. ',\\t' .. words[i * 7 % 5 + 1] .. '.  (' .. i .. ')\\n'\n"
      "  parts[i] = line; n = n + #line\n"
      "end\n"
      "text = '  ' .. table.concat(parts) .. 'last=end'\n"
      "lines = i";
  lua_pushinteger(L, 4 * 1024 * 1024);
  CHECK(run(L, make_text, "=setup", 1, 0, NULL) == 0);
  const char *ordinary[] = {
      "local r, n = text:gsub('%s+', ' '); assert(n > lines * 3)",
      "local i, j, k, v = text:find('(%w+)=(%w+)'); assert(k == 'key1' and v == 'value1')",
      "local n = 0; for k, v in text:gmatch('(%w+)=(%w+)') do n = n + 1 end; assert(n == lines + 1)",
      "local r = text:match('^%s*(.-)%s*$'); assert(#r == #text - 2)",
      "local n = 0; for l in text:gmatch('[^\\n]+') do n = n + 1 end; assert(n == lines + 1)",
      "assert(text:find('nowhere=%d+') == nil)",
  };
  for (size_t i = 0; i < sizeof ordinary / sizeof *ordinary; i++) {
    CHECK(run(L, ordinary[i], "=ordinary", 0, 0, &ms) == 0);
    printf("4 MB ordinary: %.0f ms: %s\n", ms, ordinary[i]);
  }
  /* how close ordinary patterns come to the budget: on 256 kB of the same text, each fits in half of
   * the default steps per byte (the worst, the unanchored find with '$', needs ~18) */
  lua_pushinteger(L, 256 * 1024);
  CHECK(run(L, make_text, "=setup", 1, 0, NULL) == 0);
  const char *heavier[] = {
      "local i, j, k, v = text:find('(%w+)=(%w+)$'); assert(k == 'last' and v == 'end')",
      "assert(text:find('[%w_]+%s*=%s*%d+%s*$') == nil)",
      "local r, n = text:gsub('(%w+)=(%w+)', '%2=%1'); assert(n == lines + 1)",
      "local r, n = text:gsub('%f[%w]%w+', string.upper); assert(n > lines * 4)",
      "local r, n = text:gsub('%b()', ''); assert(n == lines)",
      "local r, n = text:gsub('[<>&\"]', {}); assert(n == 0)",
      "local r = text:match('^%s*(.-)%s*$'); assert(#r == #text - 2)",
  };
  sg_strpat_set_limits(0, SG_PAT_STEPS_PER_BYTE / 2);
  for (size_t i = 0; i < sizeof heavier / sizeof *heavier; i++) {
    CHECK(run(L, heavier[i], "=heavier", 0, 0, &ms) == 0);
    printf("256 kB within half the budget: %.0f ms: %s\n", ms, heavier[i]);
  }
  sg_strpat_set_limits(-1, -1);
  CHECK(run(L, "text = nil; collectgarbage()", "=cleanup", 0, 0, NULL) == 0);

  /* no unbounded loop on empty matches or huge init values */
  CHECK(run(L,
            "local s = ('x'):rep(500000)\n"
            "local r, n = s:gsub('', '-'); assert(n == 500001 and #r == 1000001)\n"
            "r, n = s:gsub('y*', '-'); assert(n == 500001)\n"
            "local c = 0; for _ in s:gmatch('') do c = c + 1 end; assert(c == 500001)\n"
            "assert(s:find('x', math.maxinteger) == nil and s:match('', math.maxinteger) == nil)\n"
            "c = 0; for _ in s:gmatch('x', math.maxinteger) do c = c + 1 end; assert(c == 0)\n"
            "assert(s:find('x', math.mininteger) == 1)",
            "=empty", 0, 0, &ms) == 0);
  printf("500 kB of empty matches: %.0f ms\n", ms);
}

int main(void) {
  test_install();

  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  lua_register(L, "check", l_check);
  CHECK(run(L,
            "stock = {find = string.find, match = string.match, gmatch = string.gmatch, gsub = string.gsub}",
            "=setup", 0, 0, NULL) == 0);
  CHECK_EQ_INT(sg_strpat_install(L), 0);
  CHECK(run(L,
            "bounded = {find = string.find, match = string.match, gmatch = string.gmatch, gsub = string.gsub}",
            "=setup", 0, 0, NULL) == 0);

  test_hand(L);
  test_depth(L);
  test_fuzz(L);
  test_bounds(L);
  CHECK_EQ_INT(lua_gettop(L), 0);
  lua_close(L);
  return check_report();
}
