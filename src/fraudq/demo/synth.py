"""Synthetic labelled Chinese dialogues, written from this project's own templates.

Tests and the demo train and evaluate on these so they never need the real data set. The pools share
vocabulary across labels on purpose (normal talk about banks, refunds and verification codes; scams that
open with small talk), so a model has to combine several cues rather than spot one keyword.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from fraudq.config import DEFAULT_INSTRUCTION

SURNAMES = list("王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁"
                "潘蒋蔡余杜叶程魏苏吕丁沈任姚卢傅钟姜崔谭")
GIVEN = list("伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华玉兰萍建国红梅志鹏海燕雪峰晨宇浩然欣怡子涵佳琪俊")
BANKS = ["工商银行", "建设银行", "农业银行", "中国银行", "招商银行", "交通银行", "邮政储蓄银行"]
PLATFORMS = ["淘宝", "京东", "拼多多", "抖音商城", "唯品会", "闲鱼"]
APPS = ["安心理财", "金盛汇", "云投宝", "鑫享通", "恒信资本", "速融贷", "易借钱"]
PRODUCTS = ["羽绒服", "蓝牙耳机", "电饭煲", "儿童书包", "运动鞋", "护肤品套装", "平板电脑", "空气炸锅"]
PLACES = ["三楼会议室", "公司楼下咖啡厅", "人民公园门口", "万达广场", "火车站南广场", "小区门口"]
DAYS = ["周一", "周二", "周三", "周四", "周五", "周六", "周日", "明天", "后天"]
TIMES = ["上午九点", "上午十点半", "中午十二点", "下午两点", "下午三点半", "晚上七点"]
CITIES = ["北京", "上海", "广州", "深圳", "杭州", "成都", "武汉", "南京", "西安", "长沙"]
PROJECTS = ["年度预算", "新品发布", "系统升级", "客户回访", "招聘计划", "季度复盘", "供应链优化"]
RELATIVES = ["妈", "爸", "姐", "哥", "老婆", "老公", "儿子", "闺女"]

# Each fraud kind: (scammer lines in story order: hook, pressure, request), victim replies specific to it.
FRAUD_KINDS: dict[str, dict[str, list[str]]] = {
    "fake_police": {
        "hook": [
            "我是{city}市公安局的民警，警号{num4}，现在有一起洗钱案件涉及到你的身份证。",
            "你好，这里是{city}公安局刑侦大队，你名下的一张{bank}银行卡被用于非法转账。",
            "我们接到通报，你的身份信息被犯罪团伙冒用，开了好几个账户。",
        ],
        "pressure": [
            "这个案子属于机密，你不能告诉任何人，包括你的家人，否则要承担法律责任。",
            "如果你不配合调查，我们会马上冻结你名下所有的资产。",
            "现在检察院已经下了逮捕令，你必须在今天之内证明自己的清白。",
        ],
        "request": [
            "你需要把卡里的钱转到我们指定的安全账户，核查完毕以后会原数退还。",
            "请你下载一个会议软件，打开屏幕共享，我们要核对你的银行流水。",
            "把你手机收到的验证码报给我，我们这边做一下资金清查。",
            "你先转{amount}元到国家监管账户，证明这笔钱来源合法。",
        ],
        "victim": ["啊？我从来没做过违法的事啊。", "那我该怎么办？", "你们真的是警察吗？", "我需要去派出所吗？"],
    },
    "refund": {
        "hook": [
            "您好，我是{platform}的客服，您上周买的{product}因为质检不合格需要给您办理退款。",
            "您好，您在{platform}购买的{product}快递丢件了，我们这边给您三倍赔偿。",
            "亲，您的订单出现异常，系统重复扣款了{amount}元，我们来帮您退回。",
        ],
        "pressure": [
            "这个退款通道今天就关闭了，错过了就没法处理了。",
            "系统显示您的账户信用分不够，需要先开通备用金才能退款。",
            "为了保证资金安全，退款不走平台，我们走专用通道。",
        ],
        "request": [
            "您加一下我的QQ，我发您一个退款链接，填一下银行卡号和密码。",
            "麻烦把手机收到的六位验证码告诉我，我这边马上给您操作。",
            "您打开支付宝借呗，先借出{amount}元转到我们的对公账户，退款会一起返还。",
            "请您扫这个二维码，输入卡号和有效期就能收到退款了。",
        ],
        "victim": ["我确实买过这个东西。", "退款不是原路返回吗？", "要怎么操作？", "为什么要验证码？"],
    },
    "investment": {
        "hook": [
            "我这边有个内部渠道，{app}平台的理财产品，日收益能到百分之三。",
            "老师带单，这周跟着买已经翻了一倍，名额有限。",
            "我表哥在{app}做数字货币，稳赚不赔，我自己投了{amount}都回本了。",
        ],
        "pressure": [
            "今天是最后一天内部价，过了今晚就涨门槛了。",
            "你先小额试试，第一笔提现秒到账，你就放心了。",
            "这个消息千万别外传，知道的人多了就不灵了。",
        ],
        "request": [
            "你先充{amount}元进去，我帮你操作，保证你一个月回本。",
            "提现被冻结是因为账户等级不够，需要再充{amount}元保证金解冻。",
            "下载{app}这个APP，把钱转到客服给的账户里就能开始投资。",
            "要提现得先交百分之二十的个人所得税，转给客服就行。",
        ],
        "victim": ["真有这么高的收益吗？", "我之前充的钱还提不出来。", "这个平台正规吗？", "我考虑一下。"],
    },
    "loan": {
        "hook": [
            "您好，我们是{app}金融，您有一笔{amount}元的低息贷款额度可以领取。",
            "无抵押无担保，凭身份证就能贷款，当天放款。",
            "看到您在找贷款，我们这边利息只要万分之三。",
        ],
        "pressure": [
            "您的银行卡号填错了，资金被冻结，需要解冻。",
            "系统判定您的流水不足，需要刷一下流水才能放款。",
            "放款前要先验证还款能力，不然审批过不了。",
        ],
        "request": [
            "您先交{amount}元的解冻金，放款的时候一起返给您。",
            "请先转{amount}元到指定账户做验资，验证完马上退回。",
            "先交一笔手续费和保险费，一共{amount}元，交完立刻到账。",
            "需要缴纳{amount}元会员费开通绿色通道才能放款。",
        ],
        "victim": ["我确实急着用钱。", "贷款为什么要先交钱？", "能不能从贷款里扣？", "好的，我看看。"],
    },
    "prize": {
        "hook": [
            "恭喜您！您的手机号在我们周年庆活动中被抽中二等奖，奖品是一台笔记本电脑和{amount}元现金。",
            "您好，您参加的节目互动抽奖中了一等奖，奖金{amount}元。",
            "您的积分快要过期了，可以兑换{amount}元现金。",
        ],
        "pressure": [
            "领奖截止到今天下午五点，逾期视为自动放弃。",
            "如果不领取，我们会按违约处理，要追究您的法律责任。",
            "这个奖项名额就剩最后一个了。",
        ],
        "request": [
            "领奖前需要先交{amount}元的个人所得税和公证费。",
            "请点击短信里的链接，填写银行卡号、密码和验证码领取。",
            "您先把{amount}元手续费打到这个账户，我们马上给您邮寄奖品。",
            "需要您先付邮费和保证金，一共{amount}元。",
        ],
        "victim": ["我参加过这个活动吗？", "真的假的？", "奖品什么时候能到？", "还要交钱啊？"],
    },
    "impersonate_friend": {
        "hook": [
            "是我啊，{victim_given}，我换号了，你存一下新号码。",
            "喂，我是你老同学，听不出我声音了？我在{city}出差。",
            "{relative}，我手机掉水里了，这是我朋友的号。",
        ],
        "pressure": [
            "我这边出了点急事，被人扣着，你千万别跟别人说。",
            "领导让我帮忙垫一笔钱，我现在不方便，明天就还你。",
            "我在医院，要马上交押金，卡里钱不够。",
        ],
        "request": [
            "你先帮我转{amount}元到这个卡上，户名是我朋友的。",
            "你直接打{amount}元到这个账号，别打电话问了，我这边信号不好。",
            "你先借我{amount}元，转到我给你的账户，明天一早就还。",
        ],
        "victim": ["你是谁啊？", "你怎么换号了？", "出什么事了？", "要多少钱？"],
    },
    "brushing": {
        "hook": [
            "在家动动手指就能赚钱，给商家刷单点赞，一单佣金五到二十元。",
            "我们招兼职，做{platform}店铺的好评任务，时间自由。",
            "您好，看您简历想找兼职，我们这边日结工资三百起。",
        ],
        "pressure": [
            "前面几单小任务已经给您返了佣金，后面是连单任务，必须做完才能一起提现。",
            "您的任务超时了，系统冻结了资金，要再做三单才能解冻。",
            "这个任务名额很抢手，现在不做就分给别人了。",
        ],
        "request": [
            "这一单需要您先垫付{amount}元，完成后本金加佣金一起返还。",
            "请把{amount}元转到商家账户，截图发给接待员。",
            "继续充值{amount}元就能把之前的钱全部提出来。",
        ],
        "victim": ["上次的佣金确实到了。", "怎么还要我先垫钱？", "我之前的钱能提出来吗？", "好吧，最后一单。"],
    },
    "credit_fix": {
        "hook": [
            "您好，我是{bank}的客服，您的信用卡额度可以提升到{amount}元。",
            "您好，我们是银保监会的工作人员，您大学时开通的校园贷账户还没有注销。",
            "您的征信有逾期记录，会影响您以后买房贷款。",
        ],
        "pressure": [
            "如果今天不处理，会影响您和家人的征信。",
            "这个是国家新规定，必须在今天之前清理完毕。",
            "逾期记录一旦上报就无法消除了。",
        ],
        "request": [
            "您需要把各个平台借出来的钱转到我们的清算账户，才能注销。",
            "请把信用卡背面的三位安全码和验证码告诉我，帮您操作提额。",
            "先转{amount}元做一下流水验证，验证完原路退回。",
        ],
        "victim": ["我好像是用过校园贷。", "我征信一直挺好的啊。", "要怎么注销？", "会影响我买房吗？"],
    },
}

# Fraud that opens like an ordinary call or chat before the hook.
INNOCENT_OPENERS = [
    "你好，请问是{victim}吗？",
    "喂，您好，打扰您一分钟。",
    "在吗？最近怎么样？",
    "您好，请问您现在方便接电话吗？",
    "早上好，今天天气不错啊。",
]
INNOCENT_VICTIM = ["是我，你哪位？", "方便，你说。", "挺好的，什么事？", "嗯，有什么事吗？", "是的，请问你是？"]
VICTIM_LATE = [
    "好的，我马上去弄。",
    "我得先问问家里人。",
    "我已经转过去了，你看一下。",
    "这听起来不太对劲啊。",
    "我没那么多钱，只有{amount}。",
    "那我现在就去银行。",
    "你别催我，我在弄了。",
]
# Money requests that are fraud or not depending on who asks and why: both labels use them.
DUAL_USE_REQUESTS = [
    "你先转{amount}元给我，回头再跟你细说。",
    "账号我发你微信了，你转一下。",
    "今天之内能转过来吗？挺急的。",
    "你先垫付一下，{day}就还你。",
    "我把收款码发给你，扫一下就行。",
    "钱转好了跟我说一声。",
]
# Normal topics; several deliberately mention money, banks, refunds or verification codes.
NORMAL_TOPICS: dict[str, list[str]] = {
    "meeting": [
        "我们{day}{time}在{place}开个会，讨论一下{project}的进度。",
        "上次会议的纪要我已经发群里了，大家看一下。",
        "{project}这块目前还差两个接口没对完。",
        "预算方面财务说今年要压缩百分之十。",
        "我觉得这个方案可以先做个小范围试点。",
        "客户那边反馈说交付时间能不能提前一周。",
        "那我会后把排期表更新一下，再同步给大家。",
        "测试环境下午会重启，大家提前保存。",
        "这个需求的优先级我建议往后放一放。",
        "市场部那边数据还没给过来，我再催一下。",
    ],
    "shopping": [
        "你看这件{product}怎么样？{platform}上打折，才{amount}块。",
        "我上次在{platform}买的{product}质量挺好的。",
        "退货的话直接在订单里申请就行，钱会原路退回。",
        "快递说{day}能到，到了我拿给你看。",
        "颜色我更喜欢灰色的，百搭一点。",
        "要不要去{place}逛逛，那边有实体店可以试。",
        "这个价格有点贵了，再等等双十一吧。",
        "我昨天申请的退款已经到账了，挺快的。",
        "评论里说尺码偏小，你买大一号。",
    ],
    "family": [
        "{relative}，{day}回家吃饭吗？我炖了排骨。",
        "孩子这周的作业我检查过了，数学有两道错了。",
        "周末带爸妈去{place}走走吧。",
        "家里的燃气费我刚用手机交了。",
        "你别忘了给奶奶打个电话，她念叨你好几天了。",
        "我下班顺路买点菜，你想吃什么？",
        "银行发短信说定期到期了，我{day}去柜台续存一下。",
        "有陌生人问验证码千万别给，咱们银行卡的事都当面说。",
        "这个月的房贷我已经还了，你不用管。",
        "孩子的学费我转到学校的缴费系统里了，收据在抽屉里。",
    ],
    "work": [
        "这个月的报销单我交给财务了，估计{day}打到工资卡。",
        "{project}的文档你写完了吗？老板{day}要看。",
        "新来的同事明天入职，你带他熟悉一下。",
        "我{day}请假一天，工作已经交接给小{surname}了。",
        "出差{city}的机票我订好了，{time}的航班。",
        "客户合同已经盖章了，首付款{amount}元走公司对公账户。",
        "这个bug我查了一下午，是配置写错了。",
        "年终奖的方案人事那边还在定。",
        "下周的培训改到线上了，链接会发邮件。",
    ],
    "friends": [
        "{day}一起去{place}吃火锅吧？",
        "上次聚餐一共{amount}块，我们AA，你微信转我就行。",
        "好久没见了，最近工作忙吗？",
        "我打算国庆去{city}玩几天，你有推荐的地方吗？",
        "那部电影我看了，结局有点仓促。",
        "你借我的那本书看完了吗？不急着还。",
        "我最近在学游泳，每周去两次。",
        "明天下雨，出门记得带伞。",
    ],
    "bank_errand": [
        "我今天去{bank}办了张新卡，柜员让我设置了交易提醒。",
        "理财经理推荐了一款年化百分之二点五的产品，我觉得还行。",
        "手机银行升级了，转账要刷脸，挺安全的。",
        "房租我每月{day}转给房东，{amount}元。",
        "听说最近冒充客服的诈骗很多，你可别随便点链接。",
        "信用卡账单出来了，这个月花了{amount}。",
        "公积金贷款批下来了，利率比商贷低不少。",
        "我在柜台问过了，挂失补卡要带身份证。",
    ],
    # Talking about a scam is not a scam: fraud vocabulary under a normal label.
    # Real institutions calling: scam-like openings, no request for money or codes.
    "legit_service": [
        "您好，我是{bank}客服，您的信用卡{day}到期，新卡已经寄出，请注意查收。",
        "这里是{city}市公安局城东派出所，您丢的钱包找到了，请带身份证来领取。",
        "您好，{platform}客服，您的退货已经签收，退款会在三个工作日内原路退回。",
        "我们不会以任何理由索要您的验证码和密码。",
        "如有疑问，请拨打银行卡背面的官方客服电话核实。",
        "您的快递放在{place}的快递柜了，取件码已经发到您手机上。",
        "社区通知，{day}{time}在活动室免费体检，记得带医保卡。",
        "好的，谢谢提醒。",
    ],
    "scam_gossip": [
        "我同事昨天接到个电话，说是{city}公安局的，让他把钱转到安全账户，他直接挂了。",
        "现在骗子都说自己是{platform}客服，要退款给你，其实是骗验证码。",
        "社区发了反诈宣传单，说公检法不会让你转账。",
        "我妈差点被刷单骗了，幸亏我及时拦住。",
        "那种日收益百分之三的理财肯定是骗人的。",
        "记得把国家反诈中心APP装上，能提醒诈骗电话。",
        "贷款之前先交钱的都是骗子，正规贷款不收这种费用。",
        "新闻说有人冒充老同学借钱，一定要打视频确认。",
    ],
}
# Retelling a scam quotes the scammer word for word; the framing is what makes it harmless.
QUOTE_FRAMES = [
    ("我同事接到个电话，对方说“", "”，他直接挂了。"),
    ("新闻里骗子的原话是“", "”，大家千万别信。"),
    ("我妈收到条短信，说“", "”，我让她删了。"),
    ("反诈民警讲课说，听到“", "”这种话就要警惕。"),
    ("昨天有人给我打电话说“", "”，我一听就是骗子，报警了。"),
]
GENERIC_REPLIES = [
    "好的。",
    "行，没问题。",
    "嗯嗯，知道了。",
    "那就这么定了。",
    "我再想想。",
    "可以啊。",
    "哈哈，好。",
    "收到，我记一下。",
    "这个我不太清楚，回头问问。",
    "对，我也是这么想的。",
]


def _name(rng: random.Random) -> tuple[str, str]:
    surname = rng.choice(SURNAMES)
    given = "".join(rng.choice(GIVEN) for _ in range(rng.choice((1, 2))))
    return surname + given, given


def _two_names(rng: random.Random) -> tuple[tuple[str, str], tuple[str, str]]:
    first = _name(rng)
    second = _name(rng)
    while second[0] == first[0]:
        second = _name(rng)
    return first, second


def _slots(rng: random.Random, victim: str, victim_given: str) -> dict[str, str]:
    amount = rng.choice([rng.randint(2, 99) * 100, rng.randint(1, 50) * 1000, rng.randint(100, 9999)])
    return {
        "amount": str(amount),
        "bank": rng.choice(BANKS),
        "platform": rng.choice(PLATFORMS),
        "app": rng.choice(APPS),
        "product": rng.choice(PRODUCTS),
        "place": rng.choice(PLACES),
        "day": rng.choice(DAYS),
        "time": rng.choice(TIMES),
        "city": rng.choice(CITIES),
        "project": rng.choice(PROJECTS),
        "relative": rng.choice(RELATIVES),
        "surname": rng.choice(SURNAMES),
        "num4": str(rng.randint(1000, 9999)),
        "victim": victim,
        "victim_given": victim_given,
    }


def _fraud_dialogue(rng: random.Random, turns: int) -> tuple[list[tuple[str, str]], str]:
    (scammer, _), (victim, victim_given) = _two_names(rng)
    slots = _slots(rng, victim, victim_given)
    kind = FRAUD_KINDS[rng.choice(sorted(FRAUD_KINDS))]
    n_scammer = (turns + 1) // 2
    # The request is what makes it a scam, so it is always said; other stages fill the remaining turns.
    stages = ["hook", "pressure", "request"]
    lines: list[str] = []
    if rng.random() < 0.3 and n_scammer >= 2:
        lines.append(rng.choice(INNOCENT_OPENERS))
    # "Pig butchering": weeks of ordinary chat, and the scam shows only in the last lines.
    if rng.random() < 0.25 and n_scammer - len(lines) >= 3:
        chat = NORMAL_TOPICS[rng.choice(["friends", "family", "shopping"])]
        lines += rng.sample(chat, min(len(chat), rng.randint(1, n_scammer - len(lines) - 2)))
    budget = n_scammer - len(lines)
    chosen = ["request"]
    for stage in ("hook", "pressure"):
        if len(chosen) < budget and rng.random() < 0.85:
            chosen.append(stage)
    while len(chosen) < budget:
        chosen.append(rng.choice(stages))
    chosen.sort(key=stages.index)
    used: set[str] = set()
    for stage in chosen:
        pool = [line for line in kind[stage] if line not in used] or kind[stage]
        if stage == "request" and "hook" in chosen and rng.random() < 0.25:
            pool = DUAL_USE_REQUESTS
        line = rng.choice(pool)
        used.add(line)
        lines.append(line)
    scam_lines = set(kind["hook"] + kind["pressure"] + kind["request"] + DUAL_USE_REQUESTS)
    out: list[tuple[str, str]] = []
    asked = hooked = False
    for i, line in enumerate(lines):
        out.append((scammer, line))
        asked = asked or line in kind["request"] or line in DUAL_USE_REQUESTS
        hooked = hooked or line in scam_lines
        if len(out) < turns:
            if i == 0 and lines[0] in INNOCENT_OPENERS:
                reply = rng.choice(INNOCENT_VICTIM)
            elif not hooked or (not asked and rng.random() < 0.3):
                reply = rng.choice(GENERIC_REPLIES)
            else:
                reply = rng.choice(kind["victim"] + (VICTIM_LATE if asked else []))
            out.append((victim, reply))
    out = out[:turns]
    return [(who, text.format_map(slots)) for who, text in out], scammer


def _normal_dialogue(rng: random.Random, turns: int) -> list[tuple[str, str]]:
    topic = rng.choice(sorted(NORMAL_TOPICS))
    if topic == "meeting" and rng.random() < 0.5:
        numbers = rng.sample(range(1, 9), rng.choice((2, 3)))
        speakers = [f"发言人{k}" for k in numbers]
    else:
        (a, _), (b, _) = _two_names(rng)
        speakers = [a, b]
        if rng.random() < 0.25:
            third, _ = _name(rng)
            if third not in speakers:
                speakers.append(third)
    slots = _slots(rng, speakers[1], speakers[1][1:])
    # Half the time borrow a line from another topic, as real conversations drift.
    pool = list(NORMAL_TOPICS[topic])
    if rng.random() < 0.5:
        pool.append(rng.choice(NORMAL_TOPICS[rng.choice(sorted(NORMAL_TOPICS))]))
    if topic == "scam_gossip":
        for _ in range(rng.randint(0, 2)):
            kind = FRAUD_KINDS[rng.choice(sorted(FRAUD_KINDS))]
            head, tail = rng.choice(QUOTE_FRAMES)
            quoted = rng.choice(kind[rng.choice(["hook", "pressure", "request"])]).rstrip("。！")
            pool.append(head + quoted + tail)
    if topic in ("friends", "family", "work") and rng.random() < 0.4:
        pool.append(rng.choice(DUAL_USE_REQUESTS))
    pool = list(dict.fromkeys(pool))
    rng.shuffle(pool)
    out: list[tuple[str, str]] = []
    last = None
    for i in range(turns):
        who = rng.choice([s for s in speakers if s != last]) if len(speakers) > 2 else speakers[i % 2]
        last = who
        text = pool.pop() if pool and (i == 0 or rng.random() < 0.7) else rng.choice(GENERIC_REPLIES)
        out.append((who, text.format_map(slots)))
    return out


def generate_dialogues(n: int, seed: int) -> list[dict]:
    """n rows, half fraud (rounded down), shuffled; the same (n, seed) always gives the same rows."""
    rng = random.Random(seed)
    labels = [i < n // 2 for i in range(n)]
    rng.shuffle(labels)
    rows = []
    for i, label in enumerate(labels):
        turns = rng.randint(3, 10)
        if label:
            lines, fraud_speaker = _fraud_dialogue(rng, turns)
        else:
            lines, fraud_speaker = _normal_dialogue(rng, turns), ""
        rows.append(
            {
                "id": f"synth-{seed}-{i:06d}",
                "instruction": DEFAULT_INSTRUCTION,
                "input": "\n".join(f"{who}: {text}" for who, text in lines),
                "label": label,
                "fraud_speaker": fraud_speaker,
            }
        )
    return rows


def to_jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_jsonl(rows), encoding="utf-8")
