#include "cli/app.h"

int main(int argc, char** argv) { return mirrorfs::cli::Main(argc, argv); }
