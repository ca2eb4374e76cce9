// The `mirrorfs` command: parses the command line (CLI11) into validated
// option structs and runs the verb, either here (mount, serve) or by asking
// the store's daemon through its control socket (everything else).
//
// Exit status (DESIGN.md): 0 success; 1 the operation failed (message on
// stderr); 2 the command line was wrong (message and usage on stderr);
// 3 timed out.
#pragma once

namespace mirrorfs::cli {

int Main(int argc, char** argv);

}  // namespace mirrorfs::cli
