// Unit tests of sync/curve.h: key files, authorized keys, loopback
// endpoints, and a real CURVE ROUTER/DEALER pair with the ZAP handler over
// tcp://127.0.0.1.
#include "sync/curve.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>
#include <zmq.hpp>

namespace mirrorfs::sync {
namespace {

using namespace std::chrono_literals;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void WriteFile(const std::string& path, const std::string& text,
               mode_t mode = 0600) {
  ::unlink(path.c_str());
  {
    std::ofstream out(path);
    out << text;
  }
  ASSERT_EQ(::chmod(path.c_str(), mode), 0) << std::strerror(errno);
}

mode_t ModeOf(const std::string& path) {
  struct stat st;
  EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
  return st.st_mode & 07777;
}

CurveKeyPair NewPair() {
  char pub[41];
  char sec[41];
  EXPECT_EQ(zmq_curve_keypair(pub, sec), 0);
  return {pub, sec};
}

// Polls `pred` every 10 ms until it holds or `limit` passes.
bool WaitFor(const std::function<bool()>& pred,
             std::chrono::milliseconds limit) {
  auto deadline = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < deadline) {
    if (pred()) return true;
    std::this_thread::sleep_for(10ms);
  }
  return pred();
}

class CurveFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string templ = "/tmp/curve_test.XXXXXX";
    ASSERT_NE(::mkdtemp(templ.data()), nullptr) << std::strerror(errno);
    dir_ = templ;
    old_umask_ = ::umask(022);
  }
  void TearDown() override {
    ::umask(old_umask_);
    std::string cmd = "rm -rf '" + dir_ + "'";
    ASSERT_EQ(std::system(cmd.c_str()), 0);
  }
  std::string Path(const std::string& name) const { return dir_ + "/" + name; }

  std::string dir_;
  mode_t old_umask_ = 0;
};

// ------------------------------------------------------------ key files ----

TEST_F(CurveFileTest, KeygenWritesPrivateAndPublicFilesThatLoadBack) {
  const std::string file = Path("node.key");
  ASSERT_TRUE(GenerateKeyFiles(file).ok());
  EXPECT_EQ(ModeOf(file), 0600u);
  EXPECT_EQ(ModeOf(file + ".pub"), 0644u);

  meta::Result<CurveKeyPair> pair = LoadKeyFile(file);
  ASSERT_TRUE(pair.ok()) << pair.status().message();
  EXPECT_TRUE(IsZ85Key(pair->public_key));
  EXPECT_TRUE(IsZ85Key(pair->secret_key));
  EXPECT_NE(pair->public_key, pair->secret_key);
  EXPECT_EQ(ReadFile(file + ".pub"), pair->public_key + "\n");
  const std::string text = ReadFile(file);
  EXPECT_NE(text.find("secret-key = " + pair->secret_key + "\n"),
            std::string::npos);
  EXPECT_NE(text.find("public-key = " + pair->public_key + "\n"),
            std::string::npos);
  EXPECT_EQ(text.front(), '#');

  // A second key is a different key.
  ASSERT_TRUE(GenerateKeyFiles(Path("other.key")).ok());
  EXPECT_NE(LoadKeyFile(Path("other.key"))->public_key, pair->public_key);
}

TEST_F(CurveFileTest, KeygenModesDoNotDependOnTheUmask) {
  ::umask(0277);
  ASSERT_TRUE(GenerateKeyFiles(Path("k")).ok());
  EXPECT_EQ(ModeOf(Path("k")), 0600u);
  EXPECT_EQ(ModeOf(Path("k.pub")), 0644u);
}

TEST_F(CurveFileTest, KeygenRefusesToOverwrite) {
  const std::string file = Path("node.key");
  ASSERT_TRUE(GenerateKeyFiles(file).ok());
  const std::string before = ReadFile(file);
  const std::string before_pub = ReadFile(file + ".pub");

  meta::Status again = GenerateKeyFiles(file);
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.err(), EEXIST);
  EXPECT_NE(again.message().find(file), std::string::npos) << again.message();
  EXPECT_EQ(ReadFile(file), before);
  EXPECT_EQ(ReadFile(file + ".pub"), before_pub);

  // Only the .pub exists: refused, and no secret file is left behind.
  WriteFile(Path("lonely.key.pub"), "x\n", 0644);
  meta::Status pub_only = GenerateKeyFiles(Path("lonely.key"));
  ASSERT_FALSE(pub_only.ok());
  EXPECT_EQ(pub_only.err(), EEXIST);
  EXPECT_NE(::access(Path("lonely.key").c_str(), F_OK), 0);

  // A dangling symlink is not followed.
  ASSERT_EQ(::symlink(Path("target").c_str(), Path("link.key").c_str()), 0);
  EXPECT_FALSE(GenerateKeyFiles(Path("link.key")).ok());
  EXPECT_NE(::access(Path("target").c_str(), F_OK), 0);
}

TEST_F(CurveFileTest, LoadKeyFileRefusesLooseModesWithoutShowingTheSecret) {
  const std::string file = Path("node.key");
  ASSERT_TRUE(GenerateKeyFiles(file).ok());
  const std::string secret = LoadKeyFile(file)->secret_key;
  for (mode_t mode : {0640, 0604, 0644, 0660, 0606, 0700 | 0040, 0610}) {
    ASSERT_EQ(::chmod(file.c_str(), mode), 0);
    meta::Result<CurveKeyPair> loaded = LoadKeyFile(file);
    ASSERT_FALSE(loaded.ok()) << std::oct << mode;
    const std::string msg = loaded.status().message();
    EXPECT_EQ(loaded.status().err(), EACCES);
    EXPECT_NE(msg.find("chmod 600 " + file), std::string::npos) << msg;
    char mode_text[8];
    std::snprintf(mode_text, sizeof mode_text, "%04o", mode);
    EXPECT_NE(msg.find(mode_text), std::string::npos) << msg;
    EXPECT_EQ(msg.find(secret), std::string::npos) << msg;
  }
  for (mode_t mode : {0600, 0400}) {
    ASSERT_EQ(::chmod(file.c_str(), mode), 0);
    EXPECT_TRUE(LoadKeyFile(file).ok()) << std::oct << mode;
  }
}

TEST_F(CurveFileTest, LoadKeyFileRefusesMalformedFilesWithoutShowingKeys) {
  const CurveKeyPair pair = NewPair();
  const CurveKeyPair other = NewPair();
  struct Case {
    std::string text;
    std::string expect;  // in the message
  };
  const std::vector<Case> cases = {
      {"", "no 'secret-key = KEY' line"},
      {"# only a comment\n\n", "no 'secret-key = KEY' line"},
      {"public-key = " + pair.public_key + "\n", "no 'secret-key = KEY'"},
      // Z85 may contain '=': either complaint is right; neither echoes it.
      {pair.secret_key + "\n", ":1: "},
      {"garbage line\n", ":1: expected 'secret-key = KEY'"},
      {"# c\nsecret-key = " + pair.secret_key.substr(1) + "\n",
       ":2: secret-key is not a CURVE key"},
      {"secret-key = " + pair.secret_key + "x\n", ":1: secret-key is not"},
      {"secret-key = " + pair.secret_key.substr(0, 39) + "\"\n",
       ":1: secret-key is not"},
      {"secret-key = " + pair.secret_key + "\nsecret-key = " + pair.secret_key +
           "\n",
       ":2: secret-key is given more than once"},
      {"secret = " + pair.secret_key + "\n", ":1: unknown field"},
      {"public-key = " + other.public_key +
           "\nsecret-key = " + pair.secret_key + "\n",
       "public-key does not belong to secret-key"},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    const std::string file = Path("bad" + std::to_string(i));
    WriteFile(file, cases[i].text);
    meta::Result<CurveKeyPair> loaded = LoadKeyFile(file);
    ASSERT_FALSE(loaded.ok()) << "case " << i;
    const std::string msg = loaded.status().message();
    EXPECT_EQ(loaded.status().err(), EINVAL) << msg;
    EXPECT_NE(msg.find(file), std::string::npos) << msg;
    EXPECT_NE(msg.find(cases[i].expect), std::string::npos)
        << "case " << i << ": " << msg;
    for (const std::string& key :
         {pair.secret_key, pair.public_key, other.public_key,
          pair.secret_key.substr(1)}) {
      EXPECT_EQ(msg.find(key), std::string::npos) << "case " << i;
    }
  }

  // Hand-written, CRLF, extra blanks, public key optional: accepted.
  WriteFile(Path("hand"),
            "\r\n  # mine\r\n\tsecret-key=" + pair.secret_key + "  \r\n");
  meta::Result<CurveKeyPair> hand = LoadKeyFile(Path("hand"));
  ASSERT_TRUE(hand.ok()) << hand.status().message();
  EXPECT_EQ(hand->secret_key, pair.secret_key);
  EXPECT_EQ(hand->public_key, pair.public_key);

  // Not a regular file; missing; too large.
  ASSERT_EQ(::mkdir(Path("dir").c_str(), 0700), 0);
  meta::Result<CurveKeyPair> dir = LoadKeyFile(Path("dir"));
  ASSERT_FALSE(dir.ok());
  EXPECT_NE(dir.status().message().find("not a regular file"),
            std::string::npos);
  ASSERT_EQ(::mkfifo(Path("fifo").c_str(), 0600), 0);
  EXPECT_FALSE(LoadKeyFile(Path("fifo")).ok());  // and does not block
  meta::Result<CurveKeyPair> missing = LoadKeyFile(Path("missing"));
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().err(), ENOENT);
  EXPECT_NE(missing.status().message().find(Path("missing")),
            std::string::npos);
  WriteFile(Path("big"), std::string(100000, '#'));
  EXPECT_FALSE(LoadKeyFile(Path("big")).ok());
}

// ------------------------------------------------------ authorized keys ----

TEST_F(CurveFileTest, AuthorizedKeysParse) {
  const CurveKeyPair a = NewPair();
  const CurveKeyPair b = NewPair();
  const CurveKeyPair c = NewPair();
  const std::string file = Path("authorized");
  WriteFile(file,
            "# mirrorfs authorized keys\n"
            "\n"
            "a " +
                a.public_key +
                "\n"
                "   # indented comment\n"
                "node-b.example_1\t  " +
                b.public_key + "  \r\n" + "c " + c.public_key,  // no newline
            0644);
  meta::Result<AuthorizedKeys> keys = LoadAuthorizedKeys(file);
  ASSERT_TRUE(keys.ok()) << keys.status().message();
  EXPECT_EQ(keys->by_name.size(), 3u);
  EXPECT_EQ(keys->by_name.at("a"), a.public_key);
  EXPECT_EQ(keys->by_name.at("node-b.example_1"), b.public_key);
  EXPECT_EQ(keys->by_name.at("c"), c.public_key);
  EXPECT_EQ(keys->NameOf(b.public_key), "node-b.example_1");
  EXPECT_EQ(keys->NameOf(a.secret_key), "");
  EXPECT_EQ(keys->NameOf(""), "");

  WriteFile(Path("empty"), "# nobody yet\n", 0644);
  meta::Result<AuthorizedKeys> empty = LoadAuthorizedKeys(Path("empty"));
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(empty->by_name.empty());
}

TEST_F(CurveFileTest, AuthorizedKeysErrorsNameTheLine) {
  const CurveKeyPair a = NewPair();
  const CurveKeyPair b = NewPair();
  const std::string head = "# peers\na " + a.public_key + "\n";
  struct Case {
    std::string text;
    std::string expect;
  };
  const std::vector<Case> cases = {
      {head + "b\n", ":3: expected 'NAME PUBLIC-KEY'"},
      {head + "b " + b.public_key + " extra\n",
       ":3: expected 'NAME PUBLIC-KEY'"},
      {head + "b/c " + b.public_key + "\n", ":3: bad peer name"},
      {head + std::string(65, 'n') + " " + b.public_key + "\n",
       ":3: bad peer name"},
      {head + "b " + b.public_key.substr(1) + "\n",
       ":3: the key of b is not a CURVE public key"},
      {head + "b " + b.public_key.substr(1) + "\"\n",
       ":3: the key of b is not a CURVE public key"},
      {head + "\na " + b.public_key + "\n",
       ":4: a is listed twice (first on line 2)"},
      {head + "b " + a.public_key + "\n",
       ":3: the key of b is already listed for a (line 2)"},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    const std::string file = Path("auth" + std::to_string(i));
    WriteFile(file, cases[i].text, 0644);
    meta::Result<AuthorizedKeys> keys = LoadAuthorizedKeys(file);
    ASSERT_FALSE(keys.ok()) << "case " << i;
    EXPECT_EQ(keys.status().err(), EINVAL);
    EXPECT_NE(keys.status().message().find(file + cases[i].expect),
              std::string::npos)
        << "case " << i << ": " << keys.status().message();
  }

  // Whoever can write the file could admit themselves.
  const std::string loose = Path("loose");
  WriteFile(loose, head, 0664);
  meta::Result<AuthorizedKeys> keys = LoadAuthorizedKeys(loose);
  ASSERT_FALSE(keys.ok());
  EXPECT_NE(keys.status().message().find("chmod go-w " + loose),
            std::string::npos)
      << keys.status().message();
  meta::Result<AuthorizedKeys> missing = LoadAuthorizedKeys(Path("none"));
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().err(), ENOENT);
}

// ------------------------------------------------------------- loopback ----

TEST(IsLoopbackEndpointTest, Table) {
  struct Row {
    const char* endpoint;
    bool loopback;
  };
  const Row rows[] = {
      {"tcp://127.0.0.1:7790", true},
      {"tcp://127.1.2.3:1", true},
      {"tcp://127.255.255.255:65535", true},
      {"tcp://127.0.0.1:*", true},
      {"tcp://localhost:7790", true},
      {"tcp://[::1]:7790", true},
      {"tcp://[::ffff:127.0.0.1]:7790", true},
      {"ipc:///run/mirrorfs/peer.sock", true},
      {"ipc://@abstract", true},
      {"inproc://test", true},
      {"tcp://0.0.0.0:7790", false},
      {"tcp://*:7790", false},
      {"tcp://10.0.0.2:7790", false},
      {"tcp://192.168.1.1:7790", false},
      {"tcp://128.0.0.1:7790", false},
      {"tcp://[::]:7790", false},
      {"tcp://[::2]:7790", false},
      {"tcp://[fe80::1]:7790", false},
      {"tcp://lo:7790", false},
      {"tcp://eth0:7790", false},
      {"tcp://localhost.example.com:7790", false},
      {"tcp://127.0.0.1", false},
      {"tcp://127.0.0.1:", false},
      {"tcp://127.0.0.1:99999", false},
      {"tcp://127.0.0.1:port", false},
      {"tcp://127.1:7790", false},
      {"tcp://127.0.0.1;10.0.0.1:7790", false},
      {"tcp://[::1:7790", false},
      {"TCP://127.0.0.1:7790", false},
      {"udp://127.0.0.1:7790", false},
      {"pgm://127.0.0.1;239.192.1.1:5555", false},
      {"", false},
      {"127.0.0.1:7790", false},
  };
  for (const Row& row : rows) {
    EXPECT_EQ(IsLoopbackEndpoint(row.endpoint), row.loopback) << row.endpoint;
  }
}

// ------------------------------------------------- CURVE over real TCP ----

// A CURVE ROUTER on tcp://127.0.0.1 (random port) guarded by a ZapHandler
// that admits "alice"; clients are DEALERs in the same context.
class CurveLinkTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server_keys_ = NewPair();
    alice_ = NewPair();
    mallory_ = NewPair();
    auto authorized = std::make_shared<AuthorizedKeys>();
    authorized->by_name["alice"] = alice_.public_key;
    authorized->by_name["server"] = server_keys_.public_key;
    authorized_ = authorized;
    zap_ = std::make_unique<ZapHandler>(&context_, authorized_,
                                        "/etc/mirrorfs/authorized");
    ASSERT_TRUE(zap_->Start().ok());
    server_ = zmq::socket_t(context_, zmq::socket_type::router);
    server_.set(zmq::sockopt::linger, 0);
    CurveConfig config{server_keys_, authorized_, "/etc/mirrorfs/authorized"};
    ASSERT_TRUE(ApplyCurveServer(&server_, config).ok());
    server_.bind("tcp://127.0.0.1:*");
    endpoint_ = server_.get(zmq::sockopt::last_endpoint);
  }
  void TearDown() override {
    for (auto& c : clients_) c.close();
    server_.close();
    zap_->Stop();
  }

  // A DEALER that presents `own` and expects the server's key under the
  // name "server", connected to the server.
  zmq::socket_t& CurveClient(const CurveKeyPair& own) {
    zmq::socket_t s(context_, zmq::socket_type::dealer);
    s.set(zmq::sockopt::linger, 0);
    CurveConfig config{own, authorized_, "client-authorized"};
    EXPECT_TRUE(ApplyCurveClient(&s, config, "server").ok());
    s.connect(endpoint_);
    clients_.push_back(std::move(s));
    return clients_.back();
  }

  zmq::socket_t& PlainClient() {
    zmq::socket_t s(context_, zmq::socket_type::dealer);
    s.set(zmq::sockopt::linger, 0);
    s.connect(endpoint_);
    clients_.push_back(std::move(s));
    return clients_.back();
  }

  static void Send(zmq::socket_t& s, const std::string& text) {
    // DONTWAIT: an unauthenticated pipe may never accept; queue or drop.
    (void)s.send(zmq::buffer(text), zmq::send_flags::dontwait);
  }

  // The next [routing id, body] the server receives within `limit`; the
  // body's "User-Id" goes to `*user`.
  std::optional<std::string> ServerRecv(std::chrono::milliseconds limit,
                                        std::string* user = nullptr) {
    zmq::pollitem_t item{server_.handle(), 0, ZMQ_POLLIN, 0};
    if (zmq::poll(&item, 1, limit) <= 0) return std::nullopt;
    zmq::message_t id;
    zmq::message_t body;
    if (!server_.recv(id) || !id.more() || !server_.recv(body)) {
      return std::nullopt;
    }
    last_id_ = id.to_string();
    if (user != nullptr) *user = AuthenticatedPeerName(body);
    return body.to_string();
  }

  zmq::context_t context_;
  CurveKeyPair server_keys_;
  CurveKeyPair alice_;
  CurveKeyPair mallory_;
  std::shared_ptr<const AuthorizedKeys> authorized_;
  std::unique_ptr<ZapHandler> zap_;
  zmq::socket_t server_;
  std::string endpoint_;
  std::string last_id_;
  std::vector<zmq::socket_t> clients_;
};

TEST_F(CurveLinkTest, AuthorizedClientExchangesMessages) {
  zmq::socket_t& alice = CurveClient(alice_);
  Send(alice, "hello from alice");
  std::string user;
  std::optional<std::string> got = ServerRecv(5s, &user);
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(*got, "hello from alice");
  EXPECT_EQ(user, "alice");  // the ZAP user id: the peer's name
  EXPECT_GE(zap_->admitted(), 1u);
  EXPECT_EQ(zap_->refused(), 0u);

  server_.send(zmq::buffer(last_id_), zmq::send_flags::sndmore);
  server_.send(zmq::str_buffer("hello alice"), zmq::send_flags::none);
  zmq::pollitem_t item{alice.handle(), 0, ZMQ_POLLIN, 0};
  ASSERT_EQ(zmq::poll(&item, 1, 5s), 1);
  zmq::message_t reply;
  ASSERT_TRUE(alice.recv(reply));
  EXPECT_EQ(reply.to_string(), "hello alice");
}

TEST_F(CurveLinkTest, UnknownKeyIsRefusedAndItsMessagesNeverArrive) {
  zmq::socket_t& mallory = CurveClient(mallory_);
  Send(mallory, "write from mallory");
  EXPECT_TRUE(WaitFor([&] { return zap_->refused() >= 1; }, 5s));
  EXPECT_FALSE(ServerRecv(1500ms).has_value());
  EXPECT_EQ(zap_->admitted(), 0u);

  // The refusal does not disturb an authorized peer.
  Send(CurveClient(alice_), "still works");
  std::optional<std::string> got = ServerRecv(5s);
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(*got, "still works");
  EXPECT_FALSE(ServerRecv(300ms).has_value());
}

TEST_F(CurveLinkTest, ClientExpectingAnotherServerKeyGetsNothingThrough) {
  // Alice is admitted, but believes the server is someone else: the
  // handshake cannot complete (a man in the middle looks like this).
  zmq::socket_t s(context_, zmq::socket_type::dealer);
  s.set(zmq::sockopt::linger, 0);
  auto wrong = std::make_shared<AuthorizedKeys>();
  wrong->by_name["server"] = mallory_.public_key;
  CurveConfig config{alice_, wrong, "client-authorized"};
  ASSERT_TRUE(ApplyCurveClient(&s, config, "server").ok());
  s.connect(endpoint_);
  Send(s, "to the wrong server");
  EXPECT_FALSE(ServerRecv(1500ms).has_value());
  s.close();
}

TEST_F(CurveLinkTest, ReloadAdmitsANewKeyWithoutRestart) {
  zmq::socket_t& first = CurveClient(mallory_);
  Send(first, "refused");
  ASSERT_TRUE(WaitFor([&] { return zap_->refused() >= 1; }, 5s));
  EXPECT_FALSE(ServerRecv(300ms).has_value());

  auto more = std::make_shared<AuthorizedKeys>(*authorized_);
  more->by_name["mallory"] = mallory_.public_key;
  zap_->Reload(more);

  // A fresh connection with the same key is now admitted, named by the new
  // set. (A refused DEALER may or may not retry by itself; a PeerSession
  // makes a fresh socket after a lost link anyway.)
  Send(CurveClient(mallory_), "admitted");
  std::string user;
  std::optional<std::string> got;
  // The first client may retry and deliver "refused" too; both are from an
  // admitted key now. Look for the fresh one's message.
  auto deadline = std::chrono::steady_clock::now() + 5s;
  while (std::chrono::steady_clock::now() < deadline) {
    got = ServerRecv(500ms, &user);
    if (got && *got == "admitted") break;
  }
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(*got, "admitted");
  EXPECT_EQ(user, "mallory");
}

TEST_F(CurveLinkTest, PlainClientNeverGetsAMessageThrough) {
  zmq::socket_t& plain = PlainClient();
  for (int i = 0; i < 5; ++i) Send(plain, "plaintext write");
  EXPECT_FALSE(ServerRecv(2s).has_value());
}

TEST_F(CurveLinkTest, WithoutAZapHandlerEveryClientIsRefused) {
  // ZMQ_ZAP_ENFORCE_DOMAIN: no handler means refuse, not "admit all".
  zap_->Stop();
  Send(CurveClient(alice_), "no handler");
  Send(CurveClient(mallory_), "no handler");
  EXPECT_FALSE(ServerRecv(2s).has_value());
}

TEST_F(CurveLinkTest, OneZapHandlerPerContext) {
  ZapHandler second(&context_, authorized_, "x");
  meta::Status s = second.Start();
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.err(), EADDRINUSE) << s.message();
  EXPECT_NE(s.message().find("inproc://zeromq.zap.01"), std::string::npos);
  EXPECT_FALSE(zap_->Start().ok());  // already running
}

TEST(CurveConfigTest, ClientNeedsThePeerInTheAuthorizedFile) {
  zmq::context_t context;
  zmq::socket_t s(context, zmq::socket_type::dealer);
  auto keys = std::make_shared<AuthorizedKeys>();
  keys->by_name["a"] = NewPair().public_key;
  CurveConfig config{NewPair(), keys, "/etc/mirrorfs/authorized"};
  meta::Status status = ApplyCurveClient(&s, config, "b");
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.message(),
            "peer b is not in the authorized keys file "
            "/etc/mirrorfs/authorized; add a line 'b <its public key>'");
  EXPECT_EQ(status.message().find(config.own.secret_key), std::string::npos);

  config.own.secret_key = "short";  // setsockopt refuses: an error, no throw
  EXPECT_FALSE(ApplyCurveClient(&s, config, "a").ok());
  EXPECT_FALSE(ApplyCurveServer(&s, config).ok());
}

}  // namespace
}  // namespace mirrorfs::sync
